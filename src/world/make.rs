//! `instagen world make`: the three datasets and `world.json`; `instagen world sheet`: a contact sheet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::detection::coco::{Annotation, Category, Dataset, Image};
use crate::error::{Error, Result};
use crate::util::Rng;

use super::scene::{Scene, SS};
use super::shapes::{article, Shape, DEFAULT_NOVEL, SHAPES};

/// Bumped whenever the same options would give different bytes.
pub const GENERATOR_VERSION: u32 = 1;
/// The world description file in the output folder.
pub const WORLD_JSON: &str = "world.json";
/// The image sizes accepted (`--size`): a multiple of 8 (SD-style autoencoders downsample by 4 or 8).
pub const SIZE_RANGE: (usize, usize) = (32, 512);

/// The three datasets, in the order their generators are seeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Split {
    /// Captioned scenes of every category, every object annotated: the text-to-image training data.
    Corpus,
    /// Detection training: only base-category objects annotated (novel ones appear, unannotated).
    Train,
    /// Validation: every object annotated.
    Val,
}

pub const SPLITS: [Split; 3] = [Split::Corpus, Split::Train, Split::Val];

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Corpus => "corpus",
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// Images per split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub corpus: usize,
    pub train: usize,
    pub val: usize,
}

impl Default for Counts {
    /// Sized for two-core training (see docs/DESIGN.md, "Miniature world").
    fn default() -> Self {
        Counts { corpus: 20000, train: 4000, val: 1000 }
    }
}

impl Counts {
    pub fn get(&self, s: Split) -> usize {
        match s {
            Split::Corpus => self.corpus,
            Split::Train => self.train,
            Split::Val => self.val,
        }
    }

    /// `corpus=N,train=N,val=N`, any of them (the others keep their defaults).
    pub fn parse(text: &str) -> Result<Counts> {
        let err = |msg: String| Error::Other(format!("--counts {text:?}: {msg} (want e.g. corpus=20000,train=4000,val=1000)"));
        let mut c = Counts::default();
        let mut seen = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| err(format!("{part:?} is not NAME=N")))?;
            let key = key.trim();
            let n: usize = value.trim().parse().map_err(|e| err(format!("{key}: {value:?} is not a whole number ({e})")))?;
            if n > 10_000_000 {
                return Err(err(format!("{key}: {n} images is more than 10000000")));
            }
            if seen.contains(&key) {
                return Err(err(format!("{key} is given twice")));
            }
            seen.push(key);
            match key {
                "corpus" => c.corpus = n,
                "train" => c.train = n,
                "val" => c.val = n,
                _ => return Err(err(format!("unknown split {key:?} (known: corpus, train, val)"))),
            }
        }
        Ok(c)
    }
}

/// What `world make` builds.
#[derive(Clone, Debug)]
pub struct WorldOptions {
    pub out: PathBuf,
    pub seed: u64,
    pub size: usize,
    pub counts: Counts,
    /// The categories, in id order (id = index + 1).
    pub categories: Vec<Shape>,
    /// The novel ones (a subset of `categories`); the rest are base.
    pub novel: Vec<Shape>,
}

impl WorldOptions {
    /// The default world: all twelve shapes, [`DEFAULT_NOVEL`] novel, 64x64, default counts.
    pub fn new(out: impl Into<PathBuf>, seed: u64) -> WorldOptions {
        WorldOptions { out: out.into(), seed, size: 64, counts: Counts::default(), categories: SHAPES.to_vec(), novel: DEFAULT_NOVEL.to_vec() }
    }

    /// Applies the command line's comma-separated `--categories` and `--novel` lists (names). Without
    /// `--novel`, the default novel shapes among the categories are novel.
    pub fn with_names(mut self, categories: Option<&str>, novel: Option<&str>) -> Result<WorldOptions> {
        if let Some(c) = categories {
            self.categories = parse_names(c, "--categories")?;
        }
        self.novel = match novel {
            Some(n) => parse_names(n, "--novel")?,
            None => DEFAULT_NOVEL.iter().copied().filter(|s| self.categories.contains(s)).collect(),
        };
        Ok(self)
    }

    fn check(&self) -> Result<()> {
        let (lo, hi) = SIZE_RANGE;
        if self.size < lo || self.size > hi || self.size % 8 != 0 {
            return Err(Error::Other(format!("--size {}: want a multiple of 8 in [{lo}, {hi}]", self.size)));
        }
        if let Some(s) = self.novel.iter().find(|s| !self.categories.contains(s)) {
            return Err(Error::Other(format!("--novel: {:?} is not one of the categories ({})", s.name(), names(&self.categories))));
        }
        if self.categories.iter().all(|s| self.novel.contains(s)) {
            return Err(Error::Other("--novel: every category is novel; the training set needs at least one base category".into()));
        }
        Ok(())
    }

    fn is_novel(&self, category: usize) -> bool {
        self.novel.contains(&self.categories[category])
    }
}

fn names(shapes: &[Shape]) -> String {
    shapes.iter().map(|s| s.name()).collect::<Vec<_>>().join(", ")
}

/// A comma-separated list of distinct shape names.
fn parse_names(text: &str, flag: &str) -> Result<Vec<Shape>> {
    let mut out = Vec::new();
    for n in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let s = Shape::from_name(n)
            .ok_or_else(|| Error::Other(format!("{flag}: {n:?} is not a shape of the world (known: {})", names(&SHAPES))))?;
        if out.contains(&s) {
            return Err(Error::Other(format!("{flag}: {n:?} is given twice")));
        }
        out.push(s);
    }
    if out.is_empty() && flag == "--categories" {
        return Err(Error::Other(format!("{flag}: no names in {text:?}")));
    }
    Ok(out)
}

/// The generator of image `index` of `split` in the world of `seed`: independent of the other images, so the
/// output does not depend on how the work is shared among threads.
pub fn image_rng(seed: u64, split: Split, index: u64) -> Rng {
    let mix = |a: u64, b: u64| Rng::new(a ^ Rng::new(b).next_u64()).next_u64();
    Rng::new(mix(mix(seed, split as u64 + 1), index))
}

/// `"a photograph of a star and a moon"`.
pub fn caption(names: &[&str]) -> String {
    let parts: Vec<String> = names.iter().map(|n| format!("{} {n}", article(n))).collect();
    format!("{}{}", crate::pipeline::ground::dataset::PROMPT_PREFIX, parts.join(" and "))
}

/// One category of `world.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldCategory {
    pub id: u64,
    pub name: String,
    pub novel: bool,
}

/// One split of `world.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    /// The instances file, relative to the world folder; image `file_name`s are relative to its folder.
    pub instances: String,
    pub images: usize,
    /// Objects drawn / annotated.
    pub objects: usize,
    pub annotations: usize,
}

/// `world.json`: how the world was made and its base / novel split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldInfo {
    pub generator: String,
    pub version: u32,
    pub seed: u64,
    pub size: usize,
    pub supersampling: usize,
    pub counts: Counts,
    pub categories: Vec<WorldCategory>,
    pub splits: BTreeMap<String, SplitInfo>,
    /// What a box is.
    pub boxes: String,
}

impl WorldInfo {
    /// Reads `DIR/world.json`.
    pub fn load(dir: &Path) -> Result<WorldInfo> {
        let path = dir.join(WORLD_JSON);
        let text = crate::util::files::read_text(&path, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::Other(format!("{}: not a world description: {}", path.display(), crate::util::json::describe(text.as_bytes(), &e)))
        })
    }

    pub fn base_ids(&self) -> Vec<u64> {
        self.categories.iter().filter(|c| !c.novel).map(|c| c.id).collect()
    }

    pub fn novel_ids(&self) -> Vec<u64> {
        self.categories.iter().filter(|c| c.novel).map(|c| c.id).collect()
    }
}

/// What `world make` did.
#[derive(Clone, Debug)]
pub struct WorldReport {
    pub out: PathBuf,
    pub info: WorldInfo,
    pub seconds: f64,
}

impl std::fmt::Display for WorldReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.info;
        writeln!(f, "world (seed {}, {}x{}, generator v{}) written to {} in {:.1} s", i.seed, i.size, i.size, i.version, self.out.display(), self.seconds)?;
        for (name, s) in &i.splits {
            writeln!(f, "  {name:<6} {:>7} images, {:>7} objects, {:>7} annotated: {}", s.images, s.objects, s.annotations, self.out.join(&s.instances).display())?;
        }
        let list = |novel: bool| i.categories.iter().filter(|c| c.novel == novel).map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
        writeln!(f, "  base:  {}", list(false))?;
        writeln!(f, "  novel: {}", list(true))
    }
}

/// One rendered image of a split, ready for the instances file.
struct Made {
    image: Image,
    /// `(category index, bbox xywh, area)` of every drawn object.
    objects: Vec<(usize, [f64; 4], f64)>,
}

fn render_one(o: &WorldOptions, split: Split, index: usize, dir: &Path) -> Result<Made> {
    let mut rng = image_rng(o.seed, split, index as u64);
    let scene = Scene::sample(&mut rng, o.size, &o.categories, None);
    let r = scene.render();
    let file_name = format!("{:06}.png", index + 1);
    let path = dir.join(&file_name);
    let mut bytes = Vec::new();
    r.image
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::Other(format!("{}: PNG encoding failed: {e}", path.display())))?;
    std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
    let names: Vec<&str> = scene.caption_categories.iter().map(|&c| o.categories[c].name()).collect();
    let mut extra = serde_json::Map::new();
    extra.insert("caption".into(), Value::String(caption(&names)));
    extra.insert("categories".into(), Value::Array(names.iter().map(|n| Value::String(n.to_string())).collect()));
    let image = Image { id: index as u64 + 1, file_name, width: o.size as u32, height: o.size as u32, extra };
    let objects = r.objects.iter().map(|d| (d.category, crate::detection::coco::xyxy_to_xywh(d.bbox), d.area)).collect();
    Ok(Made { image, objects })
}

/// Renders a split into `dir` (an empty folder) and writes its instances file; returns its summary.
fn make_split(o: &WorldOptions, split: Split, dir: &Path) -> Result<SplitInfo> {
    let made: Vec<Made> = (0..o.counts.get(split)).into_par_iter().map(|i| render_one(o, split, i, dir)).collect::<Result<_>>()?;
    let categories: Vec<Category> =
        o.categories.iter().enumerate().map(|(i, s)| Category { id: i as u64 + 1, name: s.name().into(), supercategory: None }).collect();
    let mut ds = Dataset { info: None, licenses: None, images: Vec::with_capacity(made.len()), annotations: Vec::new(), categories };
    let mut objects = 0;
    for m in made {
        objects += m.objects.len();
        for (c, bbox, area) in m.objects {
            if split == Split::Train && o.is_novel(c) {
                continue;
            }
            let id = ds.annotations.len() as u64 + 1;
            ds.annotations.push(Annotation { id, image_id: m.image.id, category_id: c as u64 + 1, bbox, area, iscrowd: false, segmentation: None, score: None });
        }
        ds.images.push(m.image);
    }
    ds.info = Some(serde_json::json!({
        "description": format!("instagen miniature world, {} split", split.name()),
        "version": GENERATOR_VERSION,
        "seed": o.seed,
    }));
    ds.save(dir.join(crate::pipeline::ground::dataset::INSTANCES))?;
    Ok(SplitInfo {
        instances: format!("{}/{}", split.name(), crate::pipeline::ground::dataset::INSTANCES),
        images: ds.images.len(),
        objects,
        annotations: ds.annotations.len(),
    })
}

/// `instagen world make`: renders the corpus, train and val datasets into `o.out` and writes `world.json`.
///
/// Each split is rendered into a hidden temporary folder beside its final place and renamed when complete, and
/// `world.json` is written last (atomically), so a world folder with `world.json` is whole. The folder must not
/// hold a world already.
pub fn make(o: &WorldOptions) -> Result<WorldReport> {
    o.check()?;
    let start = Instant::now();
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    for name in [WORLD_JSON, "corpus", "train", "val"] {
        let p = o.out.join(name);
        if p.exists() {
            return Err(Error::io(&p, std::io::Error::other("already exists: write the world to a new folder (or remove the old world)")));
        }
    }
    let mut splits = BTreeMap::new();
    for split in SPLITS {
        let dir = o.out.join(split.name());
        let tmp = crate::util::files::temp_path(&dir);
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let info = make_split(o, split, &tmp).and_then(|info| std::fs::rename(&tmp, &dir).map(|_| info).map_err(|e| Error::io(&dir, e)));
        match info {
            Ok(info) => splits.insert(split.name().to_string(), info),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
    }
    let info = WorldInfo {
        generator: "instagen world make".into(),
        version: GENERATOR_VERSION,
        seed: o.seed,
        size: o.size,
        supersampling: SS,
        counts: o.counts,
        categories: o
            .categories
            .iter()
            .enumerate()
            .map(|(i, s)| WorldCategory { id: i as u64 + 1, name: s.name().into(), novel: o.novel.contains(s) })
            .collect(),
        splits,
        boxes: "visible extent: the bounding box of the object's unoccluded pixels inside the image, to 1/4 pixel".into(),
    };
    let path = o.out.join(WORLD_JSON);
    let mut text = serde_json::to_string_pretty(&info).map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
    text.push('\n');
    crate::util::files::write_atomic(&path, text.as_bytes()).map_err(|e| Error::io(&path, e))?;
    Ok(WorldReport { out: o.out.clone(), info, seconds: start.elapsed().as_secs_f64() })
}

/// A contact sheet: one row per category of `o`, `per_row` scenes whose first (bottom) object is that category,
/// with a 2-pixel gap; with `boxes`, that object's box outlined in white (black on light backgrounds). The scenes
/// come from their own generators (seed, row, column), not from a split.
pub fn contact_sheet(o: &WorldOptions, per_row: usize, boxes: bool) -> Result<image::RgbImage> {
    o.check()?;
    let (size, gap) = (o.size as u32, 2u32);
    let (w, h) = (per_row as u32 * (size + gap) - gap, o.categories.len() as u32 * (size + gap) - gap);
    let mut sheet = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for row in 0..o.categories.len() {
        for col in 0..per_row {
            let mut rng = Rng::new(image_rng(o.seed, Split::Corpus, (row * per_row + col) as u64).next_u64() ^ 0x5EE7);
            let scene = Scene::sample(&mut rng, o.size, &o.categories, Some(row));
            let r = scene.render();
            let mut img = r.image;
            if boxes {
                outline(&mut img, r.objects[0].bbox);
            }
            let (x0, y0) = (col as u32 * (size + gap), row as u32 * (size + gap));
            for (x, y, p) in img.enumerate_pixels() {
                sheet.put_pixel(x0 + x, y0 + y, *p);
            }
        }
    }
    Ok(sheet)
}

/// Draws the 1-pixel outline of the pixels a box touches.
fn outline(img: &mut image::RgbImage, b: [f64; 4]) {
    let (x1, y1) = (b[0].floor() as u32, b[1].floor() as u32);
    let (x2, y2) = ((b[2].ceil() as u32).max(x1 + 1) - 1, (b[3].ceil() as u32).max(y1 + 1) - 1);
    for y in y1..=y2 {
        for x in x1..=x2 {
            if x == x1 || x == x2 || y == y1 || y == y2 {
                let p = img.get_pixel(x, y).0;
                let light = p.iter().map(|&c| c as u32).sum::<u32>() > 3 * 160;
                img.put_pixel(x, y, image::Rgb(if light { [0, 0, 0] } else { [255, 255, 255] }));
            }
        }
    }
}
