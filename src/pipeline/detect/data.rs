//! The training data of `instagen detect train`: every source's COCO images in one [`Dataset`], each sample
//! decoded, maybe mirrored, resized by the detector transform (short side drawn from its source's list) and
//! carrying its source's loss rules.
//!
//! As torchvision's detection reference: crowd annotations are left out, and images without a usable box are
//! left out of training (counted in [`DetectSummary`]). A sample's draws from its generator (a pure function of
//! (seed, epoch, index), `data::sample_rng`) are, in order: the flip (`u < flip`), then the short side
//! (`TransformConfig::pick_min_size`). Boxes are `[x0, y0, x1, y1]` in the resized image; a flip maps
//! `x0, x1` to `W - x1, W - x0` on the original image.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::data::image::flip_horizontal;
use crate::data::Dataset;
use crate::detection::coco::{self, LoadOptions, LoadSummary, Policy};
use crate::error::{Error, Result};
use crate::models::detector::transform::{resize_boxes, ImageBatch, Prepared, TransformConfig};
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

use super::config::{LabelMap, RunConfig, SourceRules};

/// One source, resolved.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub rules: SourceRules,
    pub transform: TransformConfig,
    /// How the annotation file loaded (lenient skips).
    pub load: LoadSummary,
    /// Images kept for training / left out for having no usable box.
    pub images: usize,
    pub images_without_boxes: usize,
    pub crowd_boxes: usize,
}

#[derive(Clone, Debug)]
struct Img {
    source: usize,
    id: u64,
    path: PathBuf,
    size: (usize, usize),
    boxes: Vec<[f32; 4]>,
    labels: Vec<i64>,
}

pub struct DetectDataset {
    images: Vec<Img>,
    /// Sample -> image (a source of `weight` w lists each image w times).
    order: Vec<usize>,
    pub sources: Vec<Source>,
    pub labels: LabelMap,
    flip: f32,
}

/// One training sample.
#[derive(Clone, Debug)]
pub struct DetectSample {
    pub image: Prepared,
    pub boxes: Vec<[f32; 4]>,
    /// Label indices (1..num_logits).
    pub labels: Vec<i64>,
    pub image_id: u64,
    pub source: usize,
    pub flipped: bool,
    pub min_size: usize,
    pub rpn_weight: f32,
    pub class_mask: Vec<f32>,
}

/// A batch: the padded images and the per-image targets and loss inputs.
#[derive(Clone, Debug)]
pub struct DetectBatch {
    pub images: ImageBatch,
    pub boxes: Vec<Vec<[f32; 4]>>,
    pub labels: Vec<Vec<i64>>,
    /// `[B]` f32.
    pub rpn_weight: HostTensor,
    /// `[B, num_logits]` f32.
    pub class_mask: HostTensor,
    pub image_ids: Vec<u64>,
}

impl DetectDataset {
    /// Loads and validates every source of `cfg` (paths already resolved by `RunConfig::load`).
    pub fn open(cfg: &RunConfig) -> Result<DetectDataset> {
        let lopts = |images: &PathBuf| LoadOptions {
            policy: if cfg.lenient { Policy::Lenient } else { Policy::Strict },
            image_root: Some(images.clone()),
            check_image_sizes: true,
            ..Default::default()
        };
        let mut loaded = Vec::new();
        for s in &cfg.sources {
            let (ds, summary) = coco::Dataset::load(&s.instances, &lopts(&s.images))
                .map_err(|e| Error::Other(format!("source '{}': {e}", s.name)))?;
            loaded.push((ds, summary));
        }
        let srcs: Vec<_> = cfg.sources.iter().zip(&loaded).map(|(s, (ds, _))| (s.name.as_str(), s.instances.as_path(), ds)).collect();
        let labels = LabelMap::build(cfg.model.labels, &srcs)?;
        let mut images = Vec::new();
        let mut order = Vec::new();
        let mut sources = Vec::new();
        for (si, (s, (ds, load))) in cfg.sources.iter().zip(loaded).enumerate() {
            let rules = SourceRules::resolve(si, s, &ds, &labels)?;
            let index = ds.image_index();
            let mut per: Vec<Img> = ds
                .images
                .iter()
                .map(|im| Img {
                    source: si,
                    id: im.id,
                    path: ds.image_path(&s.images, im),
                    size: (im.height as usize, im.width as usize),
                    boxes: Vec::new(),
                    labels: Vec::new(),
                })
                .collect();
            let mut crowd = 0;
            for a in &ds.annotations {
                if !rules.classes.contains(&a.category_id) {
                    return Err(Error::Other(format!(
                        "{}: annotation {} (image {}) has category {}, which sources[{si}] ('{}').classify leaves out of the classification loss",
                        s.instances.display(),
                        a.id,
                        a.image_id,
                        a.category_id,
                        s.name
                    )));
                }
                if a.iscrowd {
                    crowd += 1;
                    continue;
                }
                let Some(&ii) = index.get(&a.image_id) else { continue }; // validated
                let im = &mut per[ii];
                let (h, w) = (im.size.0 as f64, im.size.1 as f64);
                let b = [a.bbox[0].clamp(0.0, w), a.bbox[1].clamp(0.0, h), (a.bbox[0] + a.bbox[2]).clamp(0.0, w), (a.bbox[1] + a.bbox[3]).clamp(0.0, h)];
                if b[2] <= b[0] || b[3] <= b[1] {
                    continue;
                }
                im.boxes.push(b.map(|v| v as f32));
                im.labels.push(labels.label_of(a.category_id).expect("label map covers every source") as i64);
            }
            let total = per.len();
            per.retain(|im| !im.boxes.is_empty());
            let kept = per.len();
            for im in per {
                for _ in 0..s.weight {
                    order.push(images.len());
                }
                images.push(im);
            }
            sources.push(Source {
                name: s.name.clone(),
                rules,
                transform: cfg.transform(s.min_size.as_deref().unwrap_or(&cfg.model.min_size)),
                load,
                images: kept,
                images_without_boxes: total - kept,
                crowd_boxes: crowd,
            });
        }
        if order.is_empty() {
            return Err(Error::Other("detect train: no source has an image with a usable (non-crowd) box".into()));
        }
        Ok(DetectDataset { images, order, sources, labels, flip: cfg.flip })
    }

    /// Decodes `[h, w, 3]` in [0, 1] (`u8 / 255`), with the image's file named in errors.
    fn decode(&self, im: &Img) -> Result<Vec<f32>> {
        let src = &self.sources[im.source].name;
        let rgb = coco::read_image(&im.path).map_err(|e| Error::Other(format!("source '{src}', image {}: {e}", im.id)))?;
        if (rgb.height() as usize, rgb.width() as usize) != im.size {
            return Err(Error::Other(format!(
                "source '{src}', image {}: {} is {}x{}, the annotations say {}x{}",
                im.id,
                im.path.display(),
                rgb.width(),
                rgb.height(),
                im.size.1,
                im.size.0
            )));
        }
        Ok(rgb.as_raw().iter().map(|&v| v as f32 / 255.0).collect())
    }

    /// Pads samples into one batch.
    pub fn collate(&self, samples: &[DetectSample]) -> Result<DetectBatch> {
        let prepared: Vec<Prepared> = samples.iter().map(|s| s.image.clone()).collect();
        let images = TransformConfig::default().batch(&prepared)?;
        let k = self.labels.num_logits();
        let mask: Vec<f32> = samples.iter().flat_map(|s| s.class_mask.iter().copied()).collect();
        Ok(DetectBatch {
            images,
            boxes: samples.iter().map(|s| s.boxes.clone()).collect(),
            labels: samples.iter().map(|s| s.labels.clone()).collect(),
            rpn_weight: HostTensor::from_f32(&[samples.len()], DType::F32, &samples.iter().map(|s| s.rpn_weight).collect::<Vec<_>>())?,
            class_mask: HostTensor::from_f32(&[samples.len(), k], DType::F32, &mask)?,
            image_ids: samples.iter().map(|s| s.image_id).collect(),
        })
    }

    /// Per-image counts of each source, for the run's summary.
    pub fn counts(&self) -> HashMap<String, usize> {
        self.sources.iter().map(|s| (s.name.clone(), s.images)).collect()
    }
}

impl Dataset for DetectDataset {
    type Item = DetectSample;
    fn len(&self) -> usize {
        self.order.len()
    }
    fn get(&self, index: usize, rng: &mut Rng) -> Result<DetectSample> {
        let im = &self.images[self.order[index]];
        let src = &self.sources[im.source];
        let flipped = rng.uniform() < self.flip;
        let min_size = src.transform.pick_min_size(rng.uniform());
        let (h, w) = im.size;
        let mut rgb = self.decode(im)?;
        let mut boxes = im.boxes.clone();
        if flipped {
            flip_horizontal(&mut rgb, w, h, 3);
            for b in &mut boxes {
                let (x0, x1) = (b[0], b[2]);
                b[0] = w as f32 - x1;
                b[2] = w as f32 - x0;
            }
        }
        let image = src.transform.prepare(&rgb, h, w, min_size)?;
        resize_boxes(&mut boxes, (h, w), image.size);
        Ok(DetectSample {
            image,
            boxes,
            labels: im.labels.clone(),
            image_id: im.id,
            source: im.source,
            flipped,
            min_size,
            rpn_weight: src.rules.rpn_weight,
            class_mask: src.rules.class_mask.clone(),
        })
    }
}
