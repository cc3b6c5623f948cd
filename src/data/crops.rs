//! Crops of a COCO detection dataset with their prompts: the training data of InstaGen stage 1
//! (`../shared/docs/INSTAGEN.md`), for fine-tuning Stable Diffusion.
//!
//! A sample is one ground-truth box (the *anchor*), so an epoch visits every usable box once. [`plan_crop`]
//! turns the anchor, the other boxes of its image and a few random draws into a crop box, a flip and a prompt;
//! it is a pure function of its inputs, checked against an independent Python version
//! (`tools/make_crop_fixtures.py`, `tests/crops.rs`). [`CropDataset`] adds the image: decode, resample the
//! crop to `R x R` ([`super::image::resize_bilinear`], PIL's antialiased bilinear), flip, scale to [-1, 1].
//!
//! The rules, including those INSTAGEN.md leaves open:
//! - **Boxes considered**: the annotations of the anchor's image whose category is selected (`--categories`);
//!   boxes of other categories are invisible (never anchors, neighbours or prompt words), as in the
//!   open-vocabulary setting where only base annotations exist. Boxes are clipped to the image first (COCO
//!   validation allows a 1 px overshoot).
//! - **Crowd boxes** (`iscrowd`) cover groups, not objects: never anchors, never neighbours; they are named in
//!   the prompt when they lie in the crop (rule below), since their category is visible there.
//! - **Neighbours**: `k` is drawn uniformly from {1, 2, 3} (draw 1: `k = 1 + floor(3 u)`), then the `k`
//!   non-crowd boxes whose centres are nearest (Euclidean distance between box centres; ties by annotation
//!   order) join the anchor; fewer when the image has fewer. `k` is drawn even for a lone box so that the
//!   number of draws per sample does not depend on the image.
//! - **Square**: around the union of the anchor and its neighbours (`w x h`), side `max(w, h) * (1 + u)`
//!   (draw 2), centred on the union's centre. **Clamping** keeps it square: the side is capped at
//!   `min(W, H)`, then the square is shifted (not cut) to lie inside the image. A union wider than the image's
//!   short side is therefore cut at that side rather than squeezed (the crop is never distorted).
//! - **Flip**: horizontal when draw 3 is `< 0.5`.
//! - **In the crop** (for the prompt): the anchor and neighbours always; any other considered box when at
//!   least half of its area lies inside the crop square.
//! - **Prompt**: the unique category names of those boxes (first appearance: anchor, neighbours by distance,
//!   then annotation order), shuffled by Fisher-Yates from the last position down (`j = floor(u (i + 1))`, one
//!   draw per position `i = n-1 .. 1`), joined: `"a photograph of " + " and ".join(names)`.
//!
//! Draws are uniforms in [0, 1) taken in that order: `k`, scale, flip, then the shuffle.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::detection::coco::{self, Issue, IssueKind, LoadOptions, LoadSummary, Policy};
use crate::detection::eval::OVCOCO_BASE_NAMES;
use crate::error::{Error, Result};
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

use super::image::{flip_horizontal, resize_bilinear, rgb8_to_f32};

/// A source of uniform draws in [0, 1) (the loader's [`Rng`]; a fixed list in the parity test).
pub trait Draws {
    fn uniform(&mut self) -> f64;
}

impl Draws for Rng {
    fn uniform(&mut self) -> f64 {
        Rng::uniform(self) as f64
    }
}

/// `floor(u * n)` kept below `n` (for `n >= 1`).
fn pick(u: f64, n: usize) -> usize {
    ((u * n as f64) as usize).min(n - 1)
}

/// One box of an image as the crop planner sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct CropObject {
    /// The annotation id.
    pub id: u64,
    /// The category name.
    pub name: String,
    /// `[x, y, w, h]` in pixels, inside the image.
    pub bbox: [f64; 4],
    pub crowd: bool,
}

impl CropObject {
    fn center(&self) -> (f64, f64) {
        (self.bbox[0] + self.bbox[2] / 2.0, self.bbox[1] + self.bbox[3] / 2.0)
    }
}

/// What [`plan_crop`] decides for one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct CropPlan {
    /// The crop square `[x0, y0, x1, y1]` in image pixels (fractional; inside the image).
    pub crop: [f64; 4],
    /// Mirror the crop left to right.
    pub flip: bool,
    /// Annotation ids of the anchor then its neighbours (nearest first).
    pub picked: Vec<u64>,
    /// The category names of the prompt, in prompt order.
    pub names: Vec<String>,
    pub prompt: String,
}

/// The prompt for a list of category names.
pub fn prompt_for(names: &[String]) -> String {
    format!("a photograph of {}", names.join(" and "))
}

/// Plans the crop of anchor `objects[anchor]` in a `width x height` image whose considered boxes are
/// `objects` (see the module comment for the rules and the order of the draws). The anchor must not be a
/// crowd box.
pub fn plan_crop(width: f64, height: f64, objects: &[CropObject], anchor: usize, draws: &mut dyn Draws) -> CropPlan {
    let a = &objects[anchor];
    debug_assert!(!a.crowd, "a crowd box cannot be an anchor");
    // Neighbours.
    let k = 1 + pick(draws.uniform(), 3);
    let (ax, ay) = a.center();
    let mut cand: Vec<(f64, usize)> = objects
        .iter()
        .enumerate()
        .filter(|(i, o)| *i != anchor && !o.crowd)
        .map(|(i, o)| {
            let (x, y) = o.center();
            ((x - ax).powi(2) + (y - ay).powi(2), i)
        })
        .collect();
    cand.sort_by(|p, q| p.0.total_cmp(&q.0).then(p.1.cmp(&q.1)));
    let mut picked = vec![anchor];
    picked.extend(cand.iter().take(k).map(|c| c.1));

    // The square around the union.
    let mut u = [f64::INFINITY, f64::INFINITY, f64::NEG_INFINITY, f64::NEG_INFINITY];
    for &i in &picked {
        let b = objects[i].bbox;
        u = [u[0].min(b[0]), u[1].min(b[1]), u[2].max(b[0] + b[2]), u[3].max(b[1] + b[3])];
    }
    let (uw, uh) = (u[2] - u[0], u[3] - u[1]);
    let side = (uw.max(uh) * (1.0 + draws.uniform())).min(width).min(height);
    let x0 = ((u[0] + u[2]) / 2.0 - side / 2.0).clamp(0.0, width - side);
    let y0 = ((u[1] + u[3]) / 2.0 - side / 2.0).clamp(0.0, height - side);
    let crop = [x0, y0, x0 + side, y0 + side];
    let flip = draws.uniform() < 0.5;

    // Names in the crop.
    let mut named: Vec<usize> = picked.clone();
    for (i, o) in objects.iter().enumerate() {
        if picked.contains(&i) {
            continue;
        }
        let b = o.bbox;
        let iw = ((b[0] + b[2]).min(crop[2]) - b[0].max(crop[0])).max(0.0);
        let ih = ((b[1] + b[3]).min(crop[3]) - b[1].max(crop[1])).max(0.0);
        if iw * ih >= 0.5 * b[2] * b[3] {
            named.push(i);
        }
    }
    let mut names: Vec<String> = Vec::new();
    for i in named {
        if !names.contains(&objects[i].name) {
            names.push(objects[i].name.clone());
        }
    }
    for i in (1..names.len()).rev() {
        let j = pick(draws.uniform(), i + 1);
        names.swap(i, j);
    }
    CropPlan { crop, flip, picked: picked.iter().map(|&i| objects[i].id).collect(), prompt: prompt_for(&names), names }
}

// ----------------------------------------------------------------------------------------------------------
// Categories

/// Which categories a crop dataset uses (`--categories`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Categories {
    /// The 48 open-vocabulary COCO base classes ([`OVCOCO_BASE_NAMES`]).
    #[default]
    Base,
    All,
    /// Category names, as in the annotation file.
    Names(Vec<String>),
}

impl Categories {
    /// `base`, `all` or a comma-separated list of names.
    pub fn parse(s: &str) -> Categories {
        match s.trim() {
            "base" => Categories::Base,
            "all" => Categories::All,
            list => Categories::Names(list.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect()),
        }
    }

    /// The selected category ids of `ds` (loaded from `path`): an unknown name is an error listing the valid
    /// ones.
    pub fn resolve(&self, ds: &coco::Dataset, path: &Path) -> Result<Vec<u64>> {
        let by_name: HashMap<&str, u64> = ds.categories.iter().map(|c| (c.name.as_str(), c.id)).collect();
        let lookup = |names: &[&str], what: &str| -> Result<Vec<u64>> {
            let unknown: Vec<&str> = names.iter().copied().filter(|n| !by_name.contains_key(n)).collect();
            if !unknown.is_empty() {
                let mut valid: Vec<&str> = ds.categories.iter().map(|c| c.name.as_str()).collect();
                valid.sort_unstable();
                return Err(Error::Other(format!(
                    "{}: {what}: unknown category name(s) {}; the file's categories are: {}",
                    path.display(),
                    unknown.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", "),
                    valid.join(", ")
                )));
            }
            Ok(names.iter().map(|n| by_name[n]).collect())
        };
        match self {
            Categories::All => Ok(ds.categories.iter().map(|c| c.id).collect()),
            Categories::Base => lookup(&OVCOCO_BASE_NAMES, "--categories base (the 48 OV-COCO base classes)"),
            Categories::Names(names) => {
                if names.is_empty() {
                    return Err(Error::Other(format!("{}: --categories: empty list of names", path.display())));
                }
                let names: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
                lookup(&names, "--categories")
            }
        }
    }
}

// ----------------------------------------------------------------------------------------------------------
// The dataset

/// Options of [`CropDataset::open`].
#[derive(Clone, Debug)]
pub struct CropOptions {
    /// Output side `R` in pixels.
    pub resolution: usize,
    pub categories: Categories,
    /// Skip bad records and unreadable images (counted in [`CropDataset::summary`]) instead of failing.
    pub lenient: bool,
}

impl Default for CropOptions {
    fn default() -> Self {
        CropOptions { resolution: 512, categories: Categories::Base, lenient: false }
    }
}

/// One training sample.
#[derive(Clone, Debug)]
pub struct CropSample {
    /// `[R, R, 3]` f32 in [-1, 1], NHWC without the batch axis.
    pub image: HostTensor,
    pub prompt: String,
    pub image_id: u64,
    /// The anchor's annotation id.
    pub annotation_id: u64,
    /// The crop square in the source image (`[x0, y0, x1, y1]`, pixels) and whether it was mirrored.
    pub crop: [f64; 4],
    pub flipped: bool,
}

struct CropImage {
    id: u64,
    path: PathBuf,
    width: u32,
    height: u32,
    objects: Vec<CropObject>,
}

/// An image that could not be decoded when a sample needed it (lenient mode).
#[derive(Clone, Debug)]
pub struct ImageSkip {
    pub image_id: u64,
    pub path: PathBuf,
    /// The annotation whose sample needed the image first.
    pub annotation_id: u64,
    pub error: String,
}

/// What a [`CropDataset`] skipped: records at load time, images that failed to decode later.
#[derive(Clone, Debug, Default)]
pub struct CropSummary {
    pub load: LoadSummary,
    /// Anchors (usable boxes) and the images they lie in.
    pub anchors: usize,
    pub images: usize,
    pub categories: usize,
    /// Crowd boxes and boxes of unselected categories (not anchors; not an error).
    pub not_anchors: usize,
    pub image_skips: Vec<ImageSkip>,
    /// Samples served from another anchor because their image failed to decode.
    pub substituted: usize,
}

impl CropSummary {
    pub fn is_clean(&self) -> bool {
        self.load.is_clean() && self.image_skips.is_empty()
    }
}

impl fmt::Display for CropSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.load)?;
        writeln!(
            f,
            "crops: {} anchor boxes in {} images, {} categories ({} crowd or unselected boxes are not anchors)",
            self.anchors, self.images, self.categories, self.not_anchors
        )?;
        if !self.image_skips.is_empty() {
            writeln!(
                f,
                "skipped {} unreadable image(s); {} sample(s) served from the next readable anchor:",
                self.image_skips.len(),
                self.substituted
            )?;
            for s in self.image_skips.iter().take(10) {
                writeln!(f, "  image {} (annotation {}): {}", s.image_id, s.annotation_id, s.error)?;
            }
            if self.image_skips.len() > 10 {
                writeln!(f, "  ... and {} more", self.image_skips.len() - 10)?;
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Skips {
    /// Image ids of `list`.
    bad: HashSet<u64>,
    /// In the order they were found.
    list: Vec<ImageSkip>,
    substituted: usize,
}

/// The crops of a COCO instances file (see the module comment). Nothing big is cached: `get` decodes the image.
pub struct CropDataset {
    path: PathBuf,
    resolution: usize,
    lenient: bool,
    images: Vec<CropImage>,
    /// (image index, object index) of each sample.
    anchors: Vec<(usize, usize)>,
    summary: CropSummary,
    skips: Mutex<Skips>,
}

impl CropDataset {
    /// Reads and validates `instances` (COCO JSON; every image must exist under `images_dir` with the size
    /// the JSON gives), selects the categories and lists the anchors. Strict: any bad record is an error
    /// naming the file and record. Lenient: bad records are skipped and counted.
    pub fn open(instances: impl AsRef<Path>, images_dir: impl AsRef<Path>, opts: &CropOptions) -> Result<Self> {
        let path = instances.as_ref();
        let lopts = LoadOptions {
            policy: if opts.lenient { Policy::Lenient } else { Policy::Strict },
            image_root: Some(images_dir.as_ref().to_path_buf()),
            check_image_sizes: true,
            ..Default::default()
        };
        let (ds, load) = coco::Dataset::load(path, &lopts)?;
        Self::from_coco(&ds, path, images_dir.as_ref(), load, opts)
    }

    /// Builds the dataset from validated annotations (`path` names the file in messages).
    pub fn from_coco(ds: &coco::Dataset, path: &Path, images_dir: &Path, mut load: LoadSummary, opts: &CropOptions) -> Result<Self> {
        if opts.resolution == 0 {
            return Err(Error::Other(format!("{}: --resolution must be at least 1", path.display())));
        }
        let selected = opts.categories.resolve(ds, path)?;
        let names: HashMap<u64, &str> = ds.categories.iter().map(|c| (c.id, c.name.as_str())).collect();
        let index = ds.image_index();
        let mut images: Vec<CropImage> = ds
            .images
            .iter()
            .map(|im| CropImage {
                id: im.id,
                path: ds.image_path(images_dir, im),
                width: im.width,
                height: im.height,
                objects: Vec::new(),
            })
            .collect();
        let mut not_anchors = 0;
        let mut anchors = Vec::new();
        for a in &ds.annotations {
            let Some(&ii) = index.get(&a.image_id) else { continue }; // validation guarantees it
            if !selected.contains(&a.category_id) {
                not_anchors += 1;
                continue;
            }
            let im = &mut images[ii];
            let (w, h) = (im.width as f64, im.height as f64);
            let x0 = a.bbox[0].clamp(0.0, w);
            let y0 = a.bbox[1].clamp(0.0, h);
            let x1 = (a.bbox[0] + a.bbox[2]).clamp(0.0, w);
            let y1 = (a.bbox[1] + a.bbox[3]).clamp(0.0, h);
            if x1 <= x0 || y1 <= y0 {
                // Inside the validation tolerance but outside the image once clipped.
                let detail = format!("annotation {} (image {}): field bbox {:?} has no area inside the {}x{} image", a.id, a.image_id, a.bbox, im.width, im.height);
                if opts.lenient {
                    load.skipped.push(Issue { kind: IssueKind::BoxOutsideImage, detail });
                    continue;
                }
                return Err(Error::Other(format!("{}: {detail}", path.display())));
            }
            if a.iscrowd {
                not_anchors += 1;
            } else {
                anchors.push((ii, im.objects.len()));
            }
            im.objects.push(CropObject { id: a.id, name: names[&a.category_id].to_string(), bbox: [x0, y0, x1 - x0, y1 - y0], crowd: a.iscrowd });
        }
        if anchors.is_empty() {
            return Err(Error::Other(format!(
                "{}: no usable crop: none of its {} annotations is a non-crowd box of the selected categories ({:?})",
                path.display(),
                ds.annotations.len(),
                opts.categories
            )));
        }
        let summary = CropSummary {
            load,
            anchors: anchors.len(),
            images: images.iter().filter(|im| im.objects.iter().any(|o| !o.crowd)).count(),
            categories: selected.len(),
            not_anchors,
            image_skips: Vec::new(),
            substituted: 0,
        };
        Ok(CropDataset { path: path.to_path_buf(), resolution: opts.resolution, lenient: opts.lenient, images, anchors, summary, skips: Mutex::default() })
    }

    /// The crop, flip and prompt of sample `index` (no image is read).
    pub fn plan(&self, index: usize, draws: &mut dyn Draws) -> CropPlan {
        let (ii, oi) = self.anchors[index];
        let im = &self.images[ii];
        plan_crop(im.width as f64, im.height as f64, &im.objects, oi, draws)
    }

    /// The image id and annotation id of sample `index`.
    pub fn ids(&self, index: usize) -> (u64, u64) {
        let (ii, oi) = self.anchors[index];
        (self.images[ii].id, self.images[ii].objects[oi].id)
    }

    /// What was loaded and skipped so far (image decode failures accumulate as samples are read).
    pub fn summary(&self) -> CropSummary {
        let mut s = self.summary.clone();
        let sk = self.skips.lock().unwrap_or_else(|e| e.into_inner());
        s.image_skips = sk.list.clone();
        s.substituted = sk.substituted;
        s
    }

    pub fn resolution(&self) -> usize {
        self.resolution
    }

    fn decode(&self, ii: usize, oi: usize) -> Result<image::RgbImage> {
        let im = &self.images[ii];
        let err = |msg: String| {
            Error::Other(format!(
                "{}: cannot read the image of annotation {} (image {} in {}): {msg}",
                im.path.display(),
                im.objects[oi].id,
                im.id,
                self.path.display()
            ))
        };
        let img = coco::read_image(&im.path).map_err(|e| err(e.to_string()))?;
        if img.dimensions() != (im.width, im.height) {
            return Err(err(format!("decoded size {}x{} differs from the JSON's {}x{}", img.width(), img.height(), im.width, im.height)));
        }
        Ok(img)
    }

    /// Decodes the image of `index`, or in lenient mode of the next anchor (in index order, wrapping) whose
    /// image decodes; recording each failure once. The choice depends only on which files are readable, so it
    /// is the same on every worker.
    fn decode_for(&self, index: usize) -> Result<(usize, image::RgbImage)> {
        let n = self.anchors.len();
        let mut first_err = None;
        for step in 0..n {
            let j = (index + step) % n;
            let (ii, oi) = self.anchors[j];
            let id = self.images[ii].id;
            if self.skips.lock().unwrap_or_else(|e| e.into_inner()).bad.contains(&id) {
                continue;
            }
            match self.decode(ii, oi) {
                Ok(img) => {
                    if step > 0 {
                        self.skips.lock().unwrap_or_else(|e| e.into_inner()).substituted += 1;
                    }
                    return Ok((j, img));
                }
                Err(e) if self.lenient => {
                    let mut sk = self.skips.lock().unwrap_or_else(|e| e.into_inner());
                    if sk.bad.insert(id) {
                        let skip = ImageSkip { image_id: id, path: self.images[ii].path.clone(), annotation_id: self.images[ii].objects[oi].id, error: e.to_string() };
                        sk.list.push(skip);
                    }
                    first_err.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        let e = first_err.map(|e| e.to_string()).unwrap_or_default();
        Err(Error::Other(format!("{}: no usable crop: no image of the dataset can be read (first error: {e})", self.path.display())))
    }
}

impl super::Dataset for CropDataset {
    type Item = CropSample;

    fn len(&self) -> usize {
        self.anchors.len()
    }

    fn get(&self, index: usize, rng: &mut Rng) -> Result<CropSample> {
        if index >= self.anchors.len() {
            return Err(Error::Other(format!("{}: sample {index} out of range ({} samples)", self.path.display(), self.anchors.len())));
        }
        let (j, img) = self.decode_for(index)?;
        let plan = self.plan(j, rng);
        let (w, h) = (img.width() as usize, img.height() as usize);
        let r = self.resolution;
        let mut px = resize_bilinear(&rgb8_to_f32(&img), w, h, 3, plan.crop, r, r);
        if plan.flip {
            flip_horizontal(&mut px, r, r, 3);
        }
        px.iter_mut().for_each(|v| *v = *v / 127.5 - 1.0);
        let (image_id, annotation_id) = self.ids(j);
        Ok(CropSample {
            image: HostTensor::from_f32(&[r, r, 3], DType::F32, &px)?,
            prompt: plan.prompt,
            image_id,
            annotation_id,
            crop: plan.crop,
            flipped: plan.flip,
        })
    }
}
