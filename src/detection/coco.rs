//! COCO detection datasets: instances JSON and detection-results JSON (read, validate, write) and images.
//!
//! Validation names the file and the offending record (index and id) and the field. Nothing is dropped silently:
//! under [`Policy::Strict`] any problem is an error listing every problem found; under [`Policy::Lenient`] the
//! offending records are skipped and the returned [`LoadSummary`] says what was skipped and why.
//!
//! Boxes are COCO `[x, y, w, h]` in pixels (the tensor ops use xyxy; see [`xywh_to_xyxy`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// What to do with a record that fails validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Policy {
    /// Any problem is an error (listing every problem found).
    #[default]
    Strict,
    /// Skip the offending record (and records that depend on it), count it in the [`LoadSummary`].
    Lenient,
}

/// Options for [`Dataset::load`].
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub policy: Policy,
    /// Folder holding the images (`file_name` is relative to it). When set, every image file must exist.
    pub image_root: Option<PathBuf>,
    /// With `image_root`: also read each image's header and compare its size with `width`/`height`.
    pub check_image_sizes: bool,
    /// How far (pixels) a box may reach past the image border before it counts as outside. COCO's own
    /// annotations stay inside; rounding of exported boxes can overshoot by a fraction of a pixel.
    pub bbox_tolerance: f64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { policy: Policy::Strict, image_root: None, check_image_sizes: false, bbox_tolerance: 1.0 }
    }
}

impl LoadOptions {
    pub fn lenient() -> Self {
        LoadOptions { policy: Policy::Lenient, ..Default::default() }
    }
}

/// The kinds of problems validation finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IssueKind {
    DuplicateImageId,
    DuplicateAnnotationId,
    DuplicateCategoryId,
    /// An image with width or height 0.
    BadImageSize,
    MissingImageFile,
    /// The image file's size differs from `width`/`height` (or the file cannot be decoded).
    ImageSizeMismatch,
    /// An annotation or detection naming an image id that is not in `images`.
    UnknownImageId,
    /// An annotation or detection naming a category id that is not in `categories`.
    UnknownCategoryId,
    /// A NaN or infinite number in a box, area or score.
    NonFinite,
    /// A box with width or height <= 0.
    EmptyBox,
    /// A box reaching outside its image (beyond the tolerance).
    BoxOutsideImage,
    /// A negative `area`.
    NegativeArea,
    /// An annotation skipped because its image was skipped.
    ImageSkipped,
}

impl IssueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueKind::DuplicateImageId => "duplicate image id",
            IssueKind::DuplicateAnnotationId => "duplicate annotation id",
            IssueKind::DuplicateCategoryId => "duplicate category id",
            IssueKind::BadImageSize => "zero image size",
            IssueKind::MissingImageFile => "missing image file",
            IssueKind::ImageSizeMismatch => "image file size mismatch",
            IssueKind::UnknownImageId => "unknown image id",
            IssueKind::UnknownCategoryId => "unknown category id",
            IssueKind::NonFinite => "non-finite number",
            IssueKind::EmptyBox => "zero-size or negative box",
            IssueKind::BoxOutsideImage => "box outside the image",
            IssueKind::NegativeArea => "negative area",
            IssueKind::ImageSkipped => "its image was skipped",
        }
    }
}

/// One validation problem: its kind and a message naming the record and field.
#[derive(Clone, Debug, PartialEq)]
pub struct Issue {
    pub kind: IssueKind,
    pub detail: String,
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CocoError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Malformed JSON or a field of the wrong type; serde's message carries the line and column.
    #[error("{path}: malformed COCO JSON{}: {source}", key.as_ref().map(|k| format!(" at key \"{k}\"")).unwrap_or_default())]
    Json {
        path: PathBuf,
        /// The key being read when it failed, when one is found before the error position.
        key: Option<String>,
        #[source]
        source: serde_json::Error,
    },
    /// Strict validation failed.
    #[error("{path}: {} invalid record(s):\n{}", issues.len(), format_issues(issues, 20))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
    #[error("{path}: {msg}")]
    Image { path: PathBuf, msg: String },
}

impl CocoError {
    /// The validation issues of an [`CocoError::Invalid`] error (empty for other errors).
    pub fn issues(&self) -> &[Issue] {
        match self {
            CocoError::Invalid { issues, .. } => issues,
            _ => &[],
        }
    }
}

impl From<CocoError> for crate::Error {
    fn from(e: CocoError) -> Self {
        crate::Error::Other(e.to_string())
    }
}

fn format_issues(issues: &[Issue], max: usize) -> String {
    let mut s = String::new();
    for i in issues.iter().take(max) {
        s.push_str(&format!("  {}: {}\n", i.kind.as_str(), i.detail));
    }
    if issues.len() > max {
        s.push_str(&format!("  ... and {} more\n", issues.len() - max));
    }
    s
}

/// What a lenient load skipped (empty after a clean or strict load).
#[derive(Clone, Debug, Default)]
pub struct LoadSummary {
    pub path: PathBuf,
    /// Records read from the file: images, annotations (or detections), categories.
    pub read: [usize; 3],
    pub skipped: Vec<Issue>,
    /// Annotations whose missing `area` was filled with `w * h`.
    pub areas_filled: usize,
    /// A detection-results file (then `read[1]` counts detections).
    pub results: bool,
}

impl LoadSummary {
    /// Skips per kind, in kind order.
    pub fn counts(&self) -> Vec<(IssueKind, usize)> {
        let mut m: std::collections::BTreeMap<IssueKind, usize> = Default::default();
        for i in &self.skipped {
            *m.entry(i.kind).or_default() += 1;
        }
        m.into_iter().collect()
    }
    pub fn is_clean(&self) -> bool {
        self.skipped.is_empty()
    }
}

impl fmt::Display for LoadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.results {
            write!(f, "{}: read {} detections", self.path.display(), self.read[1])?;
        } else {
            write!(
                f,
                "{}: read {} images, {} annotations, {} categories",
                self.path.display(),
                self.read[0],
                self.read[1],
                self.read[2]
            )?;
        }
        if self.areas_filled > 0 {
            write!(f, "; {} missing areas filled with w*h", self.areas_filled)?;
        }
        if self.skipped.is_empty() {
            return writeln!(f, "; nothing skipped");
        }
        writeln!(f, "; skipped {} record(s):", self.skipped.len())?;
        for (k, n) in self.counts() {
            writeln!(f, "  {n} x {}", k.as_str())?;
        }
        write!(f, "{}", format_issues(&self.skipped, 10))
    }
}

// ----------------------------------------------------------------------------------------------------------
// Records

/// `iscrowd` as 0/1 or a boolean.
fn de_flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum F {
        B(bool),
        I(i64),
    }
    match F::deserialize(d)? {
        F::B(b) => Ok(b),
        F::I(0) => Ok(false),
        F::I(1) => Ok(true),
        F::I(v) => Err(serde::de::Error::custom(format!("iscrowd must be 0 or 1, got {v}"))),
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub id: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    /// Other fields (license, coco_url, date_captured, ...) kept as they were.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    pub id: u64,
    pub image_id: u64,
    pub category_id: u64,
    /// `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    /// The object's area (COCO: the segmentation's area; the evaluator's area ranges use it). Filled with
    /// `w * h` on load when absent.
    #[serde(default = "nan")]
    pub area: f64,
    #[serde(default, deserialize_with = "de_flag", skip_serializing_if = "is_false")]
    pub iscrowd: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<Value>,
    /// A confidence, for pseudo-labels (synthetic data); absent in human annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
}

fn nan() -> f64 {
    f64::NAN
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Category {
    pub id: u64,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supercategory: Option<String>,
}

/// A COCO instances file (the fields a detector needs; `info` and `licenses` are carried through).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licenses: Option<Value>,
    pub images: Vec<Image>,
    #[serde(default)]
    pub annotations: Vec<Annotation>,
    pub categories: Vec<Category>,
}

/// One entry of the COCO detection-results format.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub image_id: u64,
    pub category_id: u64,
    /// `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    pub score: f64,
}

/// `[x, y, w, h]` -> `[x1, y1, x2, y2]`.
pub fn xywh_to_xyxy(b: [f64; 4]) -> [f64; 4] {
    [b[0], b[1], b[0] + b[2], b[1] + b[3]]
}

/// `[x1, y1, x2, y2]` -> `[x, y, w, h]`.
pub fn xyxy_to_xywh(b: [f64; 4]) -> [f64; 4] {
    [b[0], b[1], b[2] - b[0], b[3] - b[1]]
}

// ----------------------------------------------------------------------------------------------------------
// Reading and validation

/// A COCO JSON file: a regular file of at most [`DATA_JSON_MAX_BYTES`](crate::util::files::DATA_JSON_MAX_BYTES).
fn read_bytes(path: &Path) -> Result<Vec<u8>, CocoError> {
    crate::util::files::read_input(path, Some(crate::util::files::DATA_JSON_MAX_BYTES))
        .map_err(|source| CocoError::Io { path: path.to_path_buf(), source })
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, CocoError> {
    serde_json::from_slice(bytes).map_err(|source| {
        let key = crate::util::json::key_before(bytes, &source).filter(|_| source.is_data());
        CocoError::Json { path: path.to_path_buf(), key, source }
    })
}

/// Collects issues; in strict mode they all become one error at the end.
struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn add(&mut self, kind: IssueKind, detail: String) {
        self.issues.push(Issue { kind, detail });
    }
}

fn check_box(b: &[f64; 4], what: &str, c: &mut Checker) -> bool {
    if b.iter().any(|v| !v.is_finite()) {
        c.add(IssueKind::NonFinite, format!("{what}: field bbox {b:?} is not finite"));
        return false;
    }
    if b[2] <= 0.0 || b[3] <= 0.0 {
        c.add(IssueKind::EmptyBox, format!("{what}: field bbox {b:?} has width or height <= 0"));
        return false;
    }
    true
}

impl Dataset {
    /// Reads and validates an instances JSON file.
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<(Dataset, LoadSummary), CocoError> {
        let path = path.as_ref();
        let bytes = read_bytes(path)?;
        let ds: Dataset = parse(path, &bytes)?;
        ds.validated(path, opts)
    }

    /// Parses and validates instances JSON held in memory (`path` only names it in messages).
    pub fn from_json(path: impl AsRef<Path>, json: &[u8], opts: &LoadOptions) -> Result<(Dataset, LoadSummary), CocoError> {
        let path = path.as_ref();
        let ds: Dataset = parse(path, json)?;
        ds.validated(path, opts)
    }

    /// Validates this dataset: strict returns every problem as one error; lenient drops the offending records
    /// and lists them in the summary.
    pub fn validated(mut self, path: &Path, opts: &LoadOptions) -> Result<(Dataset, LoadSummary), CocoError> {
        let mut c = Checker { issues: Vec::new() };
        let mut summary = LoadSummary {
            path: path.to_path_buf(),
            read: [self.images.len(), self.annotations.len(), self.categories.len()],
            ..Default::default()
        };

        // Categories.
        let mut cat_ids = HashSet::new();
        self.categories.retain(|cat| {
            if cat_ids.insert(cat.id) {
                true
            } else {
                c.add(IssueKind::DuplicateCategoryId, format!("category id {} ('{}') appears again", cat.id, cat.name));
                false
            }
        });

        // Images.
        let mut img_size: HashMap<u64, (u32, u32)> = HashMap::new();
        let mut bad_images = HashSet::new();
        for (i, im) in self.images.iter().enumerate() {
            let what = format!("images[{i}] (id {}, file '{}')", im.id, im.file_name);
            if img_size.contains_key(&im.id) {
                c.add(IssueKind::DuplicateImageId, format!("{what}: field id {} appears again", im.id));
                continue; // the first one stays
            }
            let mut ok = true;
            if im.width == 0 || im.height == 0 {
                c.add(IssueKind::BadImageSize, format!("{what}: width {} x height {}", im.width, im.height));
                ok = false;
            }
            if let (true, Some(root)) = (ok, &opts.image_root) {
                let f = root.join(&im.file_name);
                if !f.is_file() {
                    c.add(IssueKind::MissingImageFile, format!("{what}: file {} does not exist", f.display()));
                    ok = false;
                } else if opts.check_image_sizes {
                    match image::image_dimensions(&f) {
                        Ok((w, h)) if (w, h) == (im.width, im.height) => {}
                        Ok((w, h)) => {
                            c.add(
                                IssueKind::ImageSizeMismatch,
                                format!("{what}: file {} is {w}x{h}, JSON says {}x{}", f.display(), im.width, im.height),
                            );
                            ok = false;
                        }
                        Err(e) => {
                            c.add(IssueKind::ImageSizeMismatch, format!("{what}: cannot read {}: {e}", f.display()));
                            ok = false;
                        }
                    }
                }
            }
            img_size.insert(im.id, (im.width, im.height));
            if !ok {
                bad_images.insert(im.id);
            }
        }
        // Keep the first image of each id, minus the bad ones.
        let mut seen = HashSet::new();
        self.images.retain(|im| seen.insert(im.id) && !bad_images.contains(&im.id));

        // Annotations.
        let mut ann_ids = HashSet::new();
        let tol = opts.bbox_tolerance;
        let mut keep = vec![true; self.annotations.len()];
        for (i, a) in self.annotations.iter_mut().enumerate() {
            let what = format!("annotations[{i}] (id {}, image {})", a.id, a.image_id);
            let before = c.issues.len();
            if !ann_ids.insert(a.id) {
                c.add(IssueKind::DuplicateAnnotationId, format!("{what}: field id {} appears again", a.id));
            }
            if !cat_ids.contains(&a.category_id) {
                c.add(IssueKind::UnknownCategoryId, format!("{what}: field category_id {} is not a category", a.category_id));
            }
            match img_size.get(&a.image_id) {
                None => c.add(IssueKind::UnknownImageId, format!("{what}: field image_id {} is not an image", a.image_id)),
                Some(_) if bad_images.contains(&a.image_id) => {
                    c.add(IssueKind::ImageSkipped, format!("{what}: image {} is invalid", a.image_id))
                }
                Some(&(w, h)) => {
                    if check_box(&a.bbox, &what, &mut c) {
                        let b = a.bbox;
                        if b[0] < -tol || b[1] < -tol || b[0] + b[2] > w as f64 + tol || b[1] + b[3] > h as f64 + tol {
                            c.add(
                                IssueKind::BoxOutsideImage,
                                format!("{what}: field bbox {b:?} reaches outside the {w}x{h} image"),
                            );
                        }
                    }
                }
            }
            if a.area.is_nan() && a.bbox.iter().all(|v| v.is_finite()) {
                a.area = a.bbox[2] * a.bbox[3];
                summary.areas_filled += 1;
            } else if !a.area.is_finite() {
                c.add(IssueKind::NonFinite, format!("{what}: field area {} is not finite", a.area));
            } else if a.area < 0.0 {
                c.add(IssueKind::NegativeArea, format!("{what}: field area {} is negative", a.area));
            }
            if c.issues.len() > before {
                keep[i] = false;
            }
        }
        // Strict mode reports images skipped because of their own problem, not their annotations again.
        if opts.policy == Policy::Strict {
            c.issues.retain(|i| i.kind != IssueKind::ImageSkipped);
            if !c.issues.is_empty() {
                return Err(CocoError::Invalid { path: path.to_path_buf(), issues: c.issues });
            }
        }
        let mut k = keep.iter();
        self.annotations.retain(|_| *k.next().unwrap());
        summary.skipped = c.issues;
        Ok((self, summary))
    }

    /// Writes the instances JSON atomically (a temporary file in the same folder, then a rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CocoError> {
        let path = path.as_ref();
        let bytes = serde_json::to_vec(self).map_err(|source| CocoError::Json { path: path.to_path_buf(), key: None, source })?;
        write_atomic(path, &bytes)
    }

    /// Category id -> index in `categories`.
    pub fn category_index(&self) -> HashMap<u64, usize> {
        self.categories.iter().enumerate().map(|(i, c)| (c.id, i)).collect()
    }

    /// Image id -> index in `images`.
    pub fn image_index(&self) -> HashMap<u64, usize> {
        self.images.iter().enumerate().map(|(i, c)| (c.id, i)).collect()
    }

    /// The path of an image under `root`.
    pub fn image_path(&self, root: &Path, image: &Image) -> PathBuf {
        root.join(&image.file_name)
    }
}

/// Reads and validates a detection-results file against the ground truth it will be evaluated on: image ids
/// must be GT images (pycocotools asserts this), category ids GT categories (pycocotools silently ignores
/// others; here strict is an error, lenient skips and counts), boxes finite with w, h > 0, scores finite.
/// Boxes are not checked against the image border (detectors may overshoot). The file order is kept (it
/// breaks score ties in the evaluator, as in pycocotools).
pub fn load_results(path: impl AsRef<Path>, gt: &Dataset, policy: Policy) -> Result<(Vec<Detection>, LoadSummary), CocoError> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    results_from_json(path, &bytes, gt, policy)
}

/// [`load_results`] on JSON held in memory (`path` only names it in messages).
pub fn results_from_json(path: &Path, json: &[u8], gt: &Dataset, policy: Policy) -> Result<(Vec<Detection>, LoadSummary), CocoError> {
    let dets: Vec<Detection> = parse(path, json)?;
    validate_results(path, dets, gt, policy)
}

/// Validates detections against `gt` (see [`load_results`]).
pub fn validate_results(path: &Path, mut dets: Vec<Detection>, gt: &Dataset, policy: Policy) -> Result<(Vec<Detection>, LoadSummary), CocoError> {
    let imgs: HashSet<u64> = gt.images.iter().map(|i| i.id).collect();
    let cats: HashSet<u64> = gt.categories.iter().map(|c| c.id).collect();
    let mut c = Checker { issues: Vec::new() };
    let mut keep = vec![true; dets.len()];
    for (i, d) in dets.iter().enumerate() {
        let what = format!("detections[{i}] (image {}, category {})", d.image_id, d.category_id);
        let before = c.issues.len();
        if !imgs.contains(&d.image_id) {
            c.add(IssueKind::UnknownImageId, format!("{what}: field image_id {} is not a ground-truth image", d.image_id));
        }
        if !cats.contains(&d.category_id) {
            c.add(
                IssueKind::UnknownCategoryId,
                format!("{what}: field category_id {} is not a ground-truth category", d.category_id),
            );
        }
        check_box(&d.bbox, &what, &mut c);
        if !d.score.is_finite() {
            c.add(IssueKind::NonFinite, format!("{what}: field score {} is not finite", d.score));
        }
        if c.issues.len() > before {
            keep[i] = false;
        }
    }
    if policy == Policy::Strict && !c.issues.is_empty() {
        return Err(CocoError::Invalid { path: path.to_path_buf(), issues: c.issues });
    }
    let n = dets.len();
    let mut k = keep.iter();
    dets.retain(|_| *k.next().unwrap());
    let summary = LoadSummary { path: path.to_path_buf(), read: [0, n, 0], skipped: c.issues, areas_filled: 0, results: true };
    Ok((dets, summary))
}

/// Writes detections in the COCO results format (`[{image_id, category_id, bbox: [x,y,w,h], score}]`),
/// atomically.
pub fn save_results(path: impl AsRef<Path>, dets: &[Detection]) -> Result<(), CocoError> {
    let path = path.as_ref();
    let bytes = serde_json::to_vec(dets).map_err(|source| CocoError::Json { path: path.to_path_buf(), key: None, source })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`, so a reader never
/// sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CocoError> {
    crate::util::files::write_atomic(path, bytes).map_err(|source| CocoError::Io { path: path.to_path_buf(), source })
}

// ----------------------------------------------------------------------------------------------------------
// Images

/// Reads a PNG or JPEG image as 8-bit RGB.
pub fn read_image(path: impl AsRef<Path>) -> Result<image::RgbImage, CocoError> {
    let path = path.as_ref();
    crate::util::files::regular_file_len(path).map_err(|source| CocoError::Io { path: path.to_path_buf(), source })?;
    let img = image::open(path).map_err(|e| CocoError::Image { path: path.to_path_buf(), msg: e.to_string() })?;
    Ok(img.into_rgb8())
}

/// Writes an RGB image as PNG or JPEG (by the extension; JPEG at quality 95), atomically.
pub fn write_image(path: impl AsRef<Path>, img: &image::RgbImage) -> Result<(), CocoError> {
    let path = path.as_ref();
    let err = |msg: String| CocoError::Image { path: path.to_path_buf(), msg };
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    let mut buf = std::io::Cursor::new(Vec::new());
    match ext.as_str() {
        "png" => img.write_to(&mut buf, image::ImageFormat::Png).map_err(|e| err(e.to_string()))?,
        "jpg" | "jpeg" => {
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95);
            img.write_with_encoder(enc).map_err(|e| err(e.to_string()))?
        }
        other => return Err(err(format!("unsupported image extension '{other}' (png, jpg, jpeg)"))),
    }
    write_atomic(path, &buf.into_inner())
}
