//! Generated-dataset folders, the layout `instagen generate` writes (docs/DESIGN.md, "Generated datasets"):
//!
//! ```text
//! DATASET/generate.json                     the run manifest ([`Manifest`])
//! DATASET/images/{index:08}.png|jpg         one image per global index
//! DATASET/latents/{index:08}.safetensors    its t=1 latent, tensor "latent" [h, w, 4] f32 (absent with --no-latents)
//! DATASET/records/{index:08}.json           one [`Record`] per finished image, written last
//! DATASET/instances.json                    COCO built from the records ([`instances_json`])
//! ```
//!
//! This module reads manifests and records and builds `instances.json`; `merge` joins shard folders
//! (`instagen merge`) and `export` writes other layouts (`instagen export --format yolo`). The COCO side of a
//! finished folder is read by [`crate::pipeline::ground::GroundSet::open_dir`].

pub mod export;
pub mod merge;

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
pub use crate::pipeline::ground::dataset::INSTANCES;

/// The manifest's `format`.
pub const FORMAT: &str = "instagen-dataset/1";
/// The manifest file of a dataset folder.
pub const MANIFEST: &str = "generate.json";
/// The folders of a dataset.
pub const IMAGES: &str = "images";
pub const LATENTS: &str = "latents";
pub const RECORDS: &str = "records";

/// `images/{index:08}.{ext}`.
pub fn image_name(index: u64, ext: &str) -> String {
    format!("{IMAGES}/{index:08}.{ext}")
}

/// `latents/{index:08}.safetensors`.
pub fn latent_name(index: u64) -> String {
    format!("{LATENTS}/{index:08}.safetensors")
}

/// `records/{index:08}.json`.
pub fn record_name(index: u64) -> String {
    format!("{RECORDS}/{index:08}.json")
}

/// The global index of a file name `{index:08}.{ext}` (any extension), or `None` for another name (a temporary
/// file `.{name}.tmp-...`, say).
pub fn index_of(file_name: &str) -> Option<u64> {
    let (stem, _) = file_name.split_once('.')?;
    (stem.len() >= 8 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok()).flatten()
}

fn invalid(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Other(format!("{}: {msg}", path.display()))
}

/// Which part of a sharded run a folder holds: the global indices `k` with `k % count == index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

/// `generate.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The command line that made the folder.
    pub command: String,
    pub instagen_version: String,
    /// Everything that determines pixels, boxes or the prompt plan (`categories` and `seed` among them).
    pub settings: serde_json::Map<String, Value>,
    pub total_images: u64,
    pub shard: Shard,
    /// The shard folders a merged folder was made from (null for a generated one).
    #[serde(default)]
    pub merged_from: Option<Vec<String>>,
}

impl Manifest {
    /// `dir/generate.json`, checked: the format, a shard index below the count, the settings' `categories` (a
    /// non-empty list of distinct names) and `seed` (a whole number).
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        if !dir.is_dir() {
            let what = if dir.exists() { "is not a folder" } else { "does not exist" };
            return Err(invalid(dir, format!("{what} (want a dataset folder written by `instagen generate`)")));
        }
        let text = crate::util::files::read_text(&path, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(&path, e))?;
        let m: Manifest = crate::util::json::from_object(&text).map_err(|e| invalid(&path, e))?;
        if m.format != FORMAT {
            return Err(invalid(&path, format!("field format is {:?}, want {FORMAT:?}", m.format)));
        }
        if m.shard.count == 0 || m.shard.index >= m.shard.count {
            return Err(invalid(&path, format!("field shard: index {} of count {} (want 0 <= index < count)", m.shard.index, m.shard.count)));
        }
        m.categories().map_err(|e| invalid(&path, e))?;
        m.seed().map_err(|e| invalid(&path, e))?;
        Ok(m)
    }

    /// The run's category names, in order (`settings.categories`).
    pub fn categories(&self) -> std::result::Result<Vec<String>, String> {
        let a = match self.settings.get("categories") {
            Some(Value::Array(a)) => a,
            Some(_) => return Err("field settings.categories is not a list of names".into()),
            None => return Err("field settings.categories is missing".into()),
        };
        let mut names: Vec<String> = Vec::with_capacity(a.len());
        for (i, v) in a.iter().enumerate() {
            let n = v.as_str().ok_or_else(|| format!("field settings.categories[{i}] is not a name (string)"))?;
            if names.iter().any(|m| m == n) {
                return Err(format!("field settings.categories[{i}]: {n:?} appears twice"));
            }
            names.push(n.to_string());
        }
        if names.is_empty() {
            return Err("field settings.categories is empty".into());
        }
        Ok(names)
    }

    /// The run seed (`settings.seed`).
    pub fn seed(&self) -> std::result::Result<u64, String> {
        self.settings.get("seed").and_then(Value::as_u64).ok_or_else(|| "field settings.seed is missing or not a whole number >= 0".to_string())
    }

    /// The global indices this folder holds, ascending.
    pub fn indices(&self) -> impl Iterator<Item = u64> + use<> {
        (self.shard.index..self.total_images).step_by(self.shard.count as usize)
    }

    /// Whether global index `k` belongs to this folder's shard.
    pub fn owns(&self, k: u64) -> bool {
        k < self.total_images && k % self.shard.count == self.shard.index
    }

    /// The keys whose values differ between two settings maps (present in one only counts), sorted.
    pub fn differing_settings(&self, other: &Manifest) -> Vec<String> {
        let mut keys: Vec<&String> = self.settings.keys().chain(other.settings.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter().filter(|k| self.settings.get(*k) != other.settings.get(*k)).cloned().collect()
    }
}

/// One box of a record: COCO `[x, y, w, h]` in pixels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordBox {
    pub category: String,
    pub bbox: [f64; 4],
    pub score: f64,
}

/// `records/{index:08}.json`: one finished image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub index: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    pub prompt: String,
    /// The prompt's categories, in prompt order.
    pub categories: Vec<String>,
    /// The image's own seed.
    pub seed: u64,
    /// `latents/{index:08}.safetensors`, or null without latents.
    pub latent: Option<String>,
    /// After the score threshold and class-wise NMS, in descending score order.
    pub boxes: Vec<RecordBox>,
}

impl Record {
    /// Parses the record file `path` (JSON).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Record> {
        let text = std::str::from_utf8(bytes).map_err(|e| invalid(path, format!("not UTF-8: {e}")))?;
        crate::util::json::from_object(text).map_err(|e| invalid(path, e))
    }

    /// Checks the record of global index `index` against the run's categories: its index and file names, a
    /// non-empty size, prompt categories of the run, each box of a prompt category, finite, non-empty and inside
    /// the image, with a score in [0, 1], in descending score order.
    pub fn check(&self, path: &Path, index: u64, categories: &[String]) -> Result<()> {
        let bad = |msg: String| Err(invalid(path, msg));
        if self.index != index {
            return bad(format!("field index is {}, want {index} (the file name's)", self.index));
        }
        let ok_name = ["png", "jpg"].iter().any(|ext| self.file_name == image_name(index, ext));
        if !ok_name {
            return bad(format!("field file_name is {:?}, want {:?} or .jpg", self.file_name, image_name(index, "png")));
        }
        if let Some(l) = &self.latent {
            if *l != latent_name(index) {
                return bad(format!("field latent is {l:?}, want {:?} or null", latent_name(index)));
            }
        }
        if self.width == 0 || self.height == 0 {
            return bad(format!("fields width x height are {} x {} (want > 0)", self.width, self.height));
        }
        if self.categories.is_empty() {
            return bad("field categories is empty (an image names at least one category)".into());
        }
        for c in &self.categories {
            if !categories.contains(c) {
                return bad(format!("field categories: {c:?} is not a category of the run ({})", categories.join(", ")));
            }
        }
        const EPS: f64 = 1e-3;
        let (w, h) = (self.width as f64, self.height as f64);
        for (i, b) in self.boxes.iter().enumerate() {
            let what = format!("boxes[{i}]");
            if !self.categories.contains(&b.category) {
                return bad(format!("{what}: field category {:?} is not one of the prompt's categories {:?}", b.category, self.categories));
            }
            let [x, y, bw, bh] = b.bbox;
            if b.bbox.iter().any(|v| !v.is_finite()) || bw <= 0.0 || bh <= 0.0 {
                return bad(format!("{what}: field bbox {:?} is not finite with width and height > 0", b.bbox));
            }
            if x < -EPS || y < -EPS || x + bw > w + EPS || y + bh > h + EPS {
                return bad(format!("{what}: field bbox {:?} reaches outside the {}x{} image", b.bbox, self.width, self.height));
            }
            if !(0.0..=1.0).contains(&b.score) {
                return bad(format!("{what}: field score {} is not in [0, 1]", b.score));
            }
            if i > 0 && b.score > self.boxes[i - 1].score {
                return bad(format!("{what}: field score {} is above the previous box's {} (boxes are in descending score order)", b.score, self.boxes[i - 1].score));
            }
        }
        Ok(())
    }
}

/// Reads `dir/records/{index:08}.json` and checks it ([`Record::check`]); a missing record is an error saying the
/// image is not finished.
pub fn read_record(dir: &Path, index: u64, categories: &[String]) -> Result<(Record, Vec<u8>)> {
    let path = dir.join(record_name(index));
    if !path.exists() {
        return Err(invalid(&path, format!("is missing: image {index} is not finished (rerun the `instagen generate` that made {})", dir.display())));
    }
    let bytes = crate::util::files::read_input(&path, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(&path, e))?;
    let r = Record::parse(&path, &bytes)?;
    r.check(&path, index, categories)?;
    Ok((r, bytes))
}

/// The COCO instances JSON of a dataset: a function of the manifest's settings (categories, seed) and the
/// records only (no times, no host names), so one process and merged shards give the same bytes. Images sorted
/// by index with `id = index + 1` and the extras `prompt`, `categories`, `seed`, `index`, `latent`; annotations
/// in (image index, box order) with `id = 1, 2, ...`, `area = w * h`, `iscrowd = 0` and the box's `score`.
/// `generate` (per shard) and `merge` both build `instances.json` with this.
pub fn instances_json(manifest: &Manifest, records: &[Record]) -> Result<Vec<u8>> {
    #[derive(Serialize)]
    struct Info<'a> {
        description: &'a str,
        version: &'a str,
        seed: u64,
    }
    #[derive(Serialize)]
    struct Category<'a> {
        id: u64,
        name: &'a str,
        supercategory: &'a str,
    }
    #[derive(Serialize)]
    struct Image<'a> {
        id: u64,
        file_name: &'a str,
        width: u32,
        height: u32,
        prompt: &'a str,
        categories: &'a [String],
        seed: u64,
        index: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        latent: Option<&'a str>,
    }
    #[derive(Serialize)]
    struct Annotation {
        id: u64,
        image_id: u64,
        category_id: u64,
        bbox: [f64; 4],
        area: f64,
        iscrowd: u8,
        score: f64,
    }
    #[derive(Serialize)]
    struct Coco<'a> {
        info: Info<'a>,
        categories: Vec<Category<'a>>,
        images: Vec<Image<'a>>,
        annotations: Vec<Annotation>,
    }
    let what = Path::new(MANIFEST);
    let names = manifest.categories().map_err(|e| invalid(what, e))?;
    let seed = manifest.seed().map_err(|e| invalid(what, e))?;
    let ids: HashMap<&str, u64> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i as u64 + 1)).collect();
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.index);
    if let Some(w) = sorted.windows(2).find(|w| w[0].index == w[1].index) {
        return Err(Error::Other(format!("instances.json: two records of image index {}", w[0].index)));
    }
    let mut images = Vec::with_capacity(sorted.len());
    let mut annotations = Vec::new();
    for r in &sorted {
        images.push(Image {
            id: r.index + 1,
            file_name: &r.file_name,
            width: r.width,
            height: r.height,
            prompt: &r.prompt,
            categories: &r.categories,
            seed: r.seed,
            index: r.index,
            latent: r.latent.as_deref(),
        });
        for b in &r.boxes {
            let category_id = *ids.get(b.category.as_str()).ok_or_else(|| {
                invalid(Path::new(&record_name(r.index)), format!("box category {:?} is not a category of the run", b.category))
            })?;
            annotations.push(Annotation {
                id: annotations.len() as u64 + 1,
                image_id: r.index + 1,
                category_id,
                bbox: b.bbox,
                area: b.bbox[2] * b.bbox[3],
                iscrowd: 0,
                score: b.score,
            });
        }
    }
    let coco = Coco {
        info: Info { description: "instagen generate", version: env!("CARGO_PKG_VERSION"), seed },
        categories: names.iter().enumerate().map(|(i, n)| Category { id: i as u64 + 1, name: n, supercategory: "" }).collect(),
        images,
        annotations,
    };
    serde_json::to_vec(&coco).map_err(|e| Error::Other(format!("instances.json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn manifest(cats: &[&str], total: u64, shard: Shard) -> Manifest {
        let settings = serde_json::json!({"categories": cats, "seed": 7, "format": "png", "latents": true, "steps": 2});
        Manifest {
            format: FORMAT.into(),
            command: "instagen generate".into(),
            instagen_version: env!("CARGO_PKG_VERSION").into(),
            settings: settings.as_object().unwrap().clone(),
            total_images: total,
            shard,
            merged_from: None,
        }
    }

    fn record(index: u64, boxes: Vec<RecordBox>) -> Record {
        Record {
            index,
            file_name: image_name(index, "png"),
            width: 32,
            height: 24,
            prompt: "a photograph of star and moon".into(),
            categories: vec!["star".into(), "moon".into()],
            seed: 1 << 40,
            latent: Some(latent_name(index)),
            boxes,
        }
    }

    fn bx(c: &str, bbox: [f64; 4], score: f64) -> RecordBox {
        RecordBox { category: c.into(), bbox, score }
    }

    #[test]
    fn names_and_indices() {
        assert_eq!(image_name(17, "png"), "images/00000017.png");
        assert_eq!(record_name(3), "records/00000003.json");
        assert_eq!(latent_name(123456789), "latents/123456789.safetensors");
        assert_eq!(index_of("00000017.json"), Some(17));
        assert_eq!(index_of("123456789.png"), Some(123456789));
        assert_eq!(index_of(".00000017.json.tmp-12-0"), None);
        assert_eq!(index_of("0017.json"), None);
        let m = manifest(&["star"], 10, Shard { index: 1, count: 4 });
        assert_eq!(m.indices().collect::<Vec<_>>(), vec![1, 5, 9]);
        assert!(m.owns(5) && !m.owns(4) && !m.owns(13));
    }

    #[test]
    fn record_checks_name_the_field() {
        let cats = vec!["star".to_string(), "moon".to_string(), "sun".to_string()];
        let p = Path::new("records/00000004.json");
        let good = record(4, vec![bx("moon", [0.0, 0.0, 32.0, 24.0], 0.9), bx("star", [31.0, 23.0, 1.0, 1.0], 0.5)]);
        good.check(p, 4, &cats).unwrap();
        let cases: Vec<(Record, &str)> = vec![
            (record(5, vec![]), "field index is 5"),
            (Record { file_name: "images/4.png".into(), ..record(4, vec![]) }, "field file_name"),
            (Record { latent: Some("x.safetensors".into()), ..record(4, vec![]) }, "field latent"),
            (Record { width: 0, ..record(4, vec![]) }, "width x height"),
            (Record { categories: vec![], ..record(4, vec![]) }, "field categories is empty"),
            (Record { categories: vec!["comet".into()], ..record(4, vec![]) }, "\"comet\" is not a category"),
            (record(4, vec![bx("sun", [0.0, 0.0, 1.0, 1.0], 0.5)]), "not one of the prompt's categories"),
            (record(4, vec![bx("star", [0.0, 0.0, 0.0, 1.0], 0.5)]), "width and height > 0"),
            (record(4, vec![bx("star", [0.0, 0.0, f64::NAN, 1.0], 0.5)]), "not finite"),
            (record(4, vec![bx("star", [30.0, 0.0, 3.0, 1.0], 0.5)]), "outside the 32x24 image"),
            (record(4, vec![bx("star", [0.0, -1.0, 3.0, 1.0], 0.5)]), "outside"),
            (record(4, vec![bx("star", [0.0, 0.0, 3.0, 1.0], 1.5)]), "score 1.5 is not in [0, 1]"),
            (record(4, vec![bx("star", [0.0, 0.0, 3.0, 1.0], 0.2), bx("moon", [0.0, 0.0, 3.0, 1.0], 0.3)]), "descending"),
        ];
        for (r, want) in cases {
            let e = r.check(p, 4, &cats).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("records/00000004.json"), "want {want:?} in: {e}");
        }
    }

    #[test]
    fn instances_json_is_coco_with_renumbered_annotations() {
        let m = manifest(&["sun", "star", "moon"], 3, Shard { index: 0, count: 1 });
        let r0 = record(0, vec![bx("moon", [1.0, 2.0, 3.0, 4.0], 0.9), bx("star", [0.0, 0.0, 32.0, 24.0], 0.4)]);
        let mut r2 = record(2, vec![bx("star", [5.0, 5.0, 2.5, 2.0], 0.7)]);
        r2.latent = None;
        let r1 = record(1, vec![]);
        // The record order given does not matter.
        let a = instances_json(&m, &[r2.clone(), r0.clone(), r1.clone()]).unwrap();
        let b = instances_json(&m, &[r0.clone(), r1.clone(), r2.clone()]).unwrap();
        assert_eq!(a, b);
        let v: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["info"], serde_json::json!({"description": "instagen generate", "version": env!("CARGO_PKG_VERSION"), "seed": 7}));
        assert_eq!(v["categories"][1], serde_json::json!({"id": 2, "name": "star", "supercategory": ""}));
        let ims = v["images"].as_array().unwrap();
        assert_eq!(ims.iter().map(|i| i["id"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(ims[0]["latent"], "latents/00000000.safetensors");
        assert!(ims[2].get("latent").is_none());
        assert_eq!(ims[0]["seed"].as_u64(), Some(1 << 40));
        let anns = v["annotations"].as_array().unwrap();
        let got: Vec<(u64, u64, u64)> =
            anns.iter().map(|a| (a["id"].as_u64().unwrap(), a["image_id"].as_u64().unwrap(), a["category_id"].as_u64().unwrap())).collect();
        assert_eq!(got, vec![(1, 1, 3), (2, 1, 2), (3, 3, 2)]);
        assert_eq!(anns[2]["area"].as_f64(), Some(5.0));
        assert_eq!(anns[0]["score"].as_f64(), Some(0.9));
        assert_eq!(anns[0]["iscrowd"].as_u64(), Some(0));
        // The COCO reader takes it.
        let (ds, _) = crate::detection::coco::Dataset::from_json("instances.json", &a, &Default::default()).unwrap();
        assert_eq!((ds.images.len(), ds.annotations.len(), ds.categories.len()), (3, 3, 3));
        // A box of a category the run does not have, or two records of one index, is an error.
        let e = instances_json(&m, &[record(0, vec![bx("comet", [0.0, 0.0, 1.0, 1.0], 0.5)])]).unwrap_err().to_string();
        assert!(e.contains("comet") && e.contains("records/00000000.json"), "{e}");
        let e = instances_json(&m, &[r1.clone(), r1]).unwrap_err().to_string();
        assert!(e.contains("two records of image index 1"), "{e}");
    }
}
