//! What people look at in a dataset folder: contact sheets (`contact/sheet_{k:04}.png`, 64 images each with
//! boxes and names drawn), the static browser (`index.html` + `thumbs/`), and the dataset card (`card.md` +
//! `card/box_sizes.png`). [`write_views`] (re)writes them all from `instances.json` (and `generate.json` when
//! present); `instagen views` calls it for any COCO folder, and [`screenshot::check`] checks a headless-Chromium
//! screenshot of the browser against the box positions the page reports.
//!
//! Images are in the order of `instances.json` (index order for a generated dataset); the image at position `p`
//! is cell `p % 64` of sheet `p / 64` and has the thumbnail `thumbs/{p:08}.jpg`.

pub mod card;
pub mod draw;
pub mod font;
pub mod html;
pub mod screenshot;
pub mod sheet;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::detection::coco::{Dataset, LoadOptions, Policy};
use crate::util::files;
use crate::{Error, Result};

/// The top-level names [`write_views`] writes into a dataset folder (derived files: everything else in a
/// generated folder is the data itself).
pub const OUTPUTS: [&str; 5] = ["contact", "thumbs", "index.html", "card.md", "card"];

/// Images per contact sheet (an 8 x 8 grid).
pub const SHEET_COLS: usize = 8;
pub const PER_SHEET: usize = SHEET_COLS * SHEET_COLS;

/// What [`write_views`] reads and how large it draws.
#[derive(Clone, Debug)]
pub struct ViewOptions {
    /// The COCO instances file (default: `DIR/instances.json`).
    pub instances: Option<PathBuf>,
    /// The folder the images' `file_name`s are relative to (default: `DIR`).
    pub images: Option<PathBuf>,
    /// Contact-sheet cell side in pixels (each image is scaled to fit, aspect kept).
    pub cell: u32,
    /// Thumbnail side in pixels (longest side; images are never enlarged).
    pub thumb: u32,
    /// Images per page of the browser.
    pub page: usize,
    /// Skip (and count) invalid records of the instances file instead of failing.
    pub lenient: bool,
}

impl Default for ViewOptions {
    fn default() -> Self {
        ViewOptions { instances: None, images: None, cell: 192, thumb: 256, page: 96, lenient: false }
    }
}

/// One box as the views draw it.
#[derive(Clone, Debug, PartialEq)]
pub struct BoxView {
    /// Position of the category in the dataset's category list (its colour).
    pub cat: usize,
    /// COCO `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    pub score: Option<f64>,
}

/// One image as the views draw it.
#[derive(Clone, Debug)]
pub struct ImageView {
    /// The image's generation index when the record has one (`index`), else its position.
    pub index: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    pub prompt: Option<String>,
    /// Category positions the prompt named (generated datasets: the record's `categories`).
    pub prompted: Vec<usize>,
    pub boxes: Vec<BoxView>,
}

/// A dataset folder as read for the views.
#[derive(Clone, Debug)]
pub struct Views {
    pub dir: PathBuf,
    pub instances: PathBuf,
    pub image_root: PathBuf,
    pub categories: Vec<String>,
    pub images: Vec<ImageView>,
    /// `generate.json` when present.
    pub manifest: Option<Value>,
    /// Records a lenient load skipped (its summary line), empty otherwise.
    pub skipped: String,
}

impl Views {
    /// Reads `instances.json` (or `opts.instances`) and `generate.json` when present.
    pub fn load(dir: &Path, opts: &ViewOptions) -> Result<Views> {
        let instances = opts.instances.clone().unwrap_or_else(|| dir.join("instances.json"));
        let image_root = opts.images.clone().unwrap_or_else(|| dir.to_path_buf());
        let lo = LoadOptions { policy: if opts.lenient { Policy::Lenient } else { Policy::Strict }, ..Default::default() };
        let (coco, summary) = Dataset::load(&instances, &lo)?;
        let skipped = if summary.is_clean() { String::new() } else { summary.to_string() };
        let manifest_path = dir.join("generate.json");
        let manifest = if manifest_path.exists() { Some(read_manifest(&manifest_path)?) } else { None };
        let mut views = Views::from_coco(coco, dir, &instances, &image_root);
        views.manifest = manifest;
        views.skipped = skipped;
        Ok(views)
    }

    /// The views of a validated COCO dataset (boxes of an image in file order).
    pub fn from_coco(coco: Dataset, dir: &Path, instances: &Path, image_root: &Path) -> Views {
        let cat_pos: HashMap<u64, usize> = coco.category_index();
        let categories: Vec<String> = coco.categories.iter().map(|c| c.name.clone()).collect();
        let by_name: HashMap<&str, usize> = categories.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let img_pos = coco.image_index();
        let mut images: Vec<ImageView> = coco
            .images
            .iter()
            .enumerate()
            .map(|(p, im)| ImageView {
                index: im.extra.get("index").and_then(Value::as_u64).unwrap_or(p as u64),
                file_name: im.file_name.clone(),
                width: im.width,
                height: im.height,
                prompt: im.extra.get("prompt").and_then(Value::as_str).map(str::to_string),
                prompted: im
                    .extra
                    .get("categories")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|n| n.as_str().and_then(|n| by_name.get(n).copied())).collect())
                    .unwrap_or_default(),
                boxes: Vec::new(),
            })
            .collect();
        for a in &coco.annotations {
            if let (Some(&p), Some(&cat)) = (img_pos.get(&a.image_id), cat_pos.get(&a.category_id)) {
                images[p].boxes.push(BoxView { cat, bbox: a.bbox, score: a.score });
            }
        }
        Views {
            dir: dir.to_path_buf(),
            instances: instances.to_path_buf(),
            image_root: image_root.to_path_buf(),
            categories,
            images,
            manifest: None,
            skipped: String::new(),
        }
    }

    pub fn boxes(&self) -> usize {
        self.images.iter().map(|i| i.boxes.len()).sum()
    }

    /// The image file of `im`.
    pub fn image_path(&self, im: &ImageView) -> PathBuf {
        self.image_root.join(&im.file_name)
    }
}

/// `generate.json` as JSON (must be an object).
fn read_manifest(path: &Path) -> Result<Value> {
    let text = files::read_text(path, Some(files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::Other(format!("{}: {}", path.display(), crate::util::json::describe(text.as_bytes(), &e))))?;
    if !v.is_object() {
        return Err(Error::Other(format!("{}: not a JSON object", path.display())));
    }
    Ok(v)
}

/// What [`write_views`] wrote.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ViewsReport {
    pub dir: PathBuf,
    pub images: usize,
    pub boxes: usize,
    pub categories: usize,
    pub sheets: Vec<PathBuf>,
    pub thumbs: usize,
    pub index_html: PathBuf,
    pub card: PathBuf,
    pub histogram: PathBuf,
    pub skipped: String,
    pub seconds: f64,
}

impl fmt::Display for ViewsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.skipped)?;
        writeln!(
            f,
            "{}: {} images, {} boxes, {} categories; wrote {} contact sheet(s) in contact/, {} thumbnails, {}, {} ({:.1} s)",
            self.dir.display(),
            self.images,
            self.boxes,
            self.categories,
            self.sheets.len(),
            self.thumbs,
            self.index_html.display(),
            self.card.display(),
            self.seconds
        )
    }
}

/// (Re)writes the contact sheets, the browser and the card of the dataset folder `dataset_dir` from its
/// `instances.json` (or `opts.instances`) and, when present, its `generate.json`. Every file is written through a
/// temporary name and a rename; sheets and thumbnails left over from a larger earlier dataset are removed.
pub fn write_views(dataset_dir: &Path, opts: &ViewOptions) -> Result<ViewsReport> {
    let t0 = std::time::Instant::now();
    check_options(opts)?;
    if dataset_dir.exists() && !dataset_dir.is_dir() {
        return Err(Error::Other(format!("{}: is not a folder", dataset_dir.display())));
    }
    let views = Views::load(dataset_dir, opts)?;
    let (sheets, thumbs) = sheet::write_sheets_and_thumbs(&views, opts)?;
    let index_html = html::write_index(&views, opts)?;
    let (card, histogram) = card::write_card(&views)?;
    Ok(ViewsReport {
        dir: dataset_dir.to_path_buf(),
        images: views.images.len(),
        boxes: views.boxes(),
        categories: views.categories.len(),
        sheets,
        thumbs,
        index_html,
        card,
        histogram,
        skipped: views.skipped.clone(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn check_options(o: &ViewOptions) -> Result<()> {
    let bad = |what: &str, v: String, range: &str| Err(Error::Other(format!("views: {what} {v} is outside {range}")));
    if !(32..=1024).contains(&o.cell) {
        return bad("cell side", o.cell.to_string(), "[32, 1024] pixels");
    }
    if !(32..=1024).contains(&o.thumb) {
        return bad("thumbnail side", o.thumb.to_string(), "[32, 1024] pixels");
    }
    if !(1..=10_000).contains(&o.page) {
        return bad("page size", o.page.to_string(), "[1, 10000] images");
    }
    Ok(())
}

/// `path` relative to the folder `from` (both made canonical as far as they exist), for links in `index.html`;
/// `None` when they share no root.
pub fn relative_path(path: &Path, from: &Path) -> Option<PathBuf> {
    let (p, f) = (files::canonical(path), files::canonical(from));
    let (pc, fc): (Vec<_>, Vec<_>) = (p.components().collect(), f.components().collect());
    let common = pc.iter().zip(&fc).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return None;
    }
    let mut out = PathBuf::new();
    for _ in common..fc.len() {
        out.push("..");
    }
    for c in &pc[common..] {
        out.push(c);
    }
    Some(out)
}

/// Removes the files `dir/{prefix}{digits}{suffix}` whose number is `>= keep` (left from a larger dataset).
fn remove_stale(dir: &Path, prefix: &str, suffix: &str, keep: usize) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let num = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(suffix));
        if let Some(n) = num.filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).and_then(|n| n.parse::<usize>().ok()) {
            if n >= keep {
                std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
            }
        }
    }
    Ok(())
}

/// Creates `dir` (and parents), naming it in the error.
fn make_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let r = relative_path(Path::new("/a/b/c/d.png"), Path::new("/a/x/y")).unwrap();
        assert_eq!(r, PathBuf::from("../../b/c/d.png"));
        assert_eq!(relative_path(Path::new("/a/b"), Path::new("/a/b")).unwrap(), PathBuf::new());
    }
}
