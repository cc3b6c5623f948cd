//! Whole captioned images for training the small SD from scratch: a COCO instances file whose images carry a
//! `caption` field (the world corpus, `instagen world make`: `DIR/corpus/instances.json`, 64x64 PNGs).
//!
//! Every image is one sample: decoded, scaled to [-1, 1] (`[R, R, 3]`, NHWC) and mirrored with probability 1/2
//! (a draw from the sample's generator; the captions name no left or right). Images must have the models' size
//! exactly (no resampling: the world is rendered at it); another size is an error naming the file, the record and
//! both sizes. With `captions`, an image without a string `caption` is an error naming the record and field.
//! With a caption dropout p, a sample's prompt is the empty one with probability p (`--caption-dropout`).
//! Samples are [`CropSample`]s with the whole image as the "crop", so stage 1's training step takes them as
//! they are.

use std::path::{Path, PathBuf};

use crate::data::crops::CropSample;
use crate::data::image::{flip_horizontal, rgb8_to_f32};
use crate::data::Dataset;
use crate::detection::coco::{self, LoadOptions};
use crate::error::{Error, Result};
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// The field holding an image's caption.
pub const CAPTION: &str = "caption";

#[derive(Clone, Debug)]
struct Item {
    id: u64,
    path: PathBuf,
    caption: String,
}

/// The images of a COCO file, whole (see the module doc).
#[derive(Clone, Debug)]
pub struct CaptionSet {
    json: PathBuf,
    items: Vec<Item>,
    resolution: usize,
    flip: bool,
    caption_dropout: f32,
}

impl CaptionSet {
    /// Reads `json` (strict COCO validation; images under `root` must exist and have the size the JSON says),
    /// requires every image to be `resolution` square and, with `captions`, to carry a caption.
    pub fn open(json: &Path, root: &Path, resolution: usize, captions: bool, flip: bool) -> Result<Self> {
        let opts = LoadOptions { image_root: Some(root.to_path_buf()), check_image_sizes: true, ..LoadOptions::default() };
        let (ds, _) = coco::Dataset::load(json, &opts)?;
        if ds.images.is_empty() {
            return Err(Error::Other(format!("{}: no images", json.display())));
        }
        let mut items = Vec::with_capacity(ds.images.len());
        for (i, im) in ds.images.iter().enumerate() {
            let what = || format!("{}: images[{i}] (id {}, {})", json.display(), im.id, im.file_name);
            if (im.width as usize, im.height as usize) != (resolution, resolution) {
                return Err(Error::Other(format!(
                    "{}: the image is {}x{}, but the models are built for {resolution}x{resolution} images",
                    what(), im.width, im.height
                )));
            }
            let caption = match im.extra.get(CAPTION) {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => s.clone(),
                Some(serde_json::Value::String(_)) if captions => return Err(Error::Other(format!("{}: field {CAPTION} is empty", what()))),
                Some(v) if captions && !v.is_string() => return Err(Error::Other(format!("{}: field {CAPTION} is not a string: {v}", what()))),
                None if captions => return Err(Error::Other(format!("{}: field {CAPTION} is missing (training on captions needs one per image)", what()))),
                _ => String::new(),
            };
            items.push(Item { id: im.id, path: ds.image_path(root, im), caption });
        }
        Ok(CaptionSet { json: json.to_path_buf(), items, resolution, flip, caption_dropout: 0.0 })
    }

    /// Replace a sample's caption by the empty prompt with probability `p` (SD's 10% for classifier-free
    /// guidance's unconditional branch); a draw from the sample's generator after the flip's.
    pub fn with_caption_dropout(mut self, p: f32) -> Result<Self> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::Mismatch { what: "--caption-dropout".into(), msg: format!("{p} is not a probability in [0, 1]") });
        }
        self.caption_dropout = p;
        Ok(self)
    }

    pub fn resolution(&self) -> usize {
        self.resolution
    }

    /// The caption of sample `index` (empty without one).
    pub fn caption(&self, index: usize) -> &str {
        &self.items[index].caption
    }

    /// Sample `index` without augmentation, `[R, R, 3]` in [-1, 1].
    pub fn image(&self, index: usize) -> Result<HostTensor> {
        let it = &self.items[index];
        let r = self.resolution;
        let err = |msg: String| Error::Other(format!("{}: image {} of {}: {msg}", it.path.display(), it.id, self.json.display()));
        let img = coco::read_image(&it.path).map_err(|e| err(e.to_string()))?;
        if img.dimensions() != (r as u32, r as u32) {
            return Err(err(format!("decoded size {}x{} differs from {r}x{r}", img.width(), img.height())));
        }
        let vals: Vec<f32> = rgb8_to_f32(&img).iter().map(|v| v / 127.5 - 1.0).collect();
        HostTensor::from_f32(&[r, r, 3], DType::F32, &vals)
    }
}

impl Dataset for CaptionSet {
    type Item = CropSample;

    fn len(&self) -> usize {
        self.items.len()
    }

    fn get(&self, index: usize, rng: &mut Rng) -> Result<CropSample> {
        let mut image = self.image(index)?;
        let r = self.resolution;
        let flipped = self.flip && rng.uniform() < 0.5;
        if flipped {
            let mut v = image.to_f32();
            flip_horizontal(&mut v, r, r, 3);
            image = HostTensor::from_f32(&[r, r, 3], DType::F32, &v)?;
        }
        let it = &self.items[index];
        let dropped = self.caption_dropout > 0.0 && rng.uniform() < self.caption_dropout;
        Ok(CropSample {
            image,
            prompt: if dropped { String::new() } else { it.caption.clone() },
            image_id: it.id,
            annotation_id: 0,
            crop: [0.0, 0.0, r as f64, r as f64],
            flipped,
        })
    }
}
