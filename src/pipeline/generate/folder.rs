//! The generated-dataset folder (the contract of docs/DESIGN.md "Generation"): the manifest `generate.json`, one
//! record per finished image `records/{index:08}.json` (written last for its image), and `instances.json`, a
//! deterministic function of the manifest's settings and the records ([`instances_json`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::shard::Shard;
use crate::error::{Error, Result};

/// `generate.json`'s `format`.
pub const FORMAT: &str = "instagen-dataset/1";
pub const MANIFEST: &str = "generate.json";
pub const INSTANCES: &str = "instances.json";
pub const IMAGES: &str = "images";
pub const LATENTS: &str = "latents";
pub const RECORDS: &str = "records";

/// `generate.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// The command line as given (informative; may differ on a rerun).
    pub command: String,
    pub instagen_version: String,
    /// Everything that determines pixels, boxes or the prompt plan (an object; compared key by key on a rerun).
    pub settings: serde_json::Value,
    pub total_images: u64,
    pub shard: Shard,
    pub merged_from: Option<Vec<String>>,
}

/// One box of a record: COCO `[x, y, w, h]` in pixels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordBox {
    pub category: String,
    pub bbox: [f32; 4],
    pub score: f32,
}

/// `records/{index:08}.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub index: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
    pub prompt: String,
    pub categories: Vec<String>,
    pub seed: u64,
    pub latent: Option<String>,
    pub boxes: Vec<RecordBox>,
}

pub fn record_name(index: u64) -> String {
    format!("{RECORDS}/{index:08}.json")
}
pub fn image_name(index: u64, ext: &str) -> String {
    format!("{IMAGES}/{index:08}.{ext}")
}
pub fn latent_name(index: u64) -> String {
    format!("{LATENTS}/{index:08}.safetensors")
}

fn invalid(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Other(format!("{}: {msg}", path.display()))
}

impl Manifest {
    /// Reads `DIR/generate.json`.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let p = dir.join(MANIFEST);
        let text = crate::util::files::read_text(&p, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(&p, e))?;
        let m: Manifest = crate::util::json::from_object(&text).map_err(|e| invalid(&p, e))?;
        if m.format != FORMAT {
            return Err(invalid(&p, format!("field format is {:?}, not {FORMAT:?}", m.format)));
        }
        if !m.settings.is_object() {
            return Err(invalid(&p, "field settings is not an object"));
        }
        Ok(m)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let p = dir.join(MANIFEST);
        let text = serde_json::to_string_pretty(self).map_err(|e| invalid(&p, e))?;
        crate::util::files::write_atomic(&p, text.as_bytes()).map_err(|e| Error::io(&p, e))
    }

    /// The settings keys (and `total_images`, `shard`) in which `other` differs from `self`, each as
    /// `key: old -> new`.
    pub fn differences(&self, other: &Manifest) -> Vec<String> {
        let empty = serde_json::Map::new();
        let a = self.settings.as_object().unwrap_or(&empty);
        let b = other.settings.as_object().unwrap_or(&empty);
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let show = |v: Option<&serde_json::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
        let mut out: Vec<String> = keys
            .into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .map(|k| format!("{k}: {} -> {}", show(a.get(k)), show(b.get(k))))
            .collect();
        if self.total_images != other.total_images {
            out.push(format!("total_images: {} -> {}", self.total_images, other.total_images));
        }
        if self.shard != other.shard {
            out.push(format!("shard: {} -> {}", self.shard, other.shard));
        }
        out
    }
}

impl Record {
    /// Reads a record file.
    pub fn load(path: &Path) -> Result<Record> {
        let text = crate::util::files::read_text(path, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(path, e))?;
        crate::util::json::from_object(&text).map_err(|e| invalid(path, e))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a record serialises");
        v.push(b'\n');
        v
    }
}

/// The records of `dir` (`records/*.json`), sorted by index; a file whose name is not its record's index, a
/// malformed record, or an index at or above `total` is an error naming the file.
pub fn read_records(dir: &Path, total: u64) -> Result<Vec<Record>> {
    let rd = dir.join(RECORDS);
    let mut out = Vec::new();
    if !rd.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(&rd).map_err(|e| Error::io(&rd, e))? {
        let e = e.map_err(|e| Error::io(&rd, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let p = e.path();
        let r = Record::load(&p)?;
        if name != format!("{:08}.json", r.index) {
            return Err(invalid(&p, format!("field index {} does not match the file name", r.index)));
        }
        if r.index >= total {
            return Err(invalid(&p, format!("field index {} is not below the run's {total} images", r.index)));
        }
        out.push(r);
    }
    out.sort_by_key(|r| r.index);
    Ok(out)
}

#[derive(Serialize)]
struct Info<'a> {
    description: &'a str,
    version: &'a str,
    seed: u64,
}

#[derive(Serialize)]
struct CategoryOut<'a> {
    id: usize,
    name: &'a str,
    supercategory: &'a str,
}

#[derive(Serialize)]
struct ImageOut<'a> {
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
struct AnnotationOut {
    id: u64,
    image_id: u64,
    category_id: usize,
    bbox: [f32; 4],
    area: f32,
    iscrowd: u8,
    score: f32,
}

#[derive(Serialize)]
struct Instances<'a> {
    info: Info<'a>,
    categories: Vec<CategoryOut<'a>>,
    images: Vec<ImageOut<'a>>,
    annotations: Vec<AnnotationOut>,
}

/// `instances.json` of a manifest and its records: a function of `settings.categories`, `settings.seed`, the crate
/// version and the records only (see the module documentation), so one process and merged shards give the same
/// bytes. Records are taken in index order; a record's category that is not in the settings' list is an error.
pub fn instances_json(manifest: &Manifest, records: &[Record]) -> Result<Vec<u8>> {
    let bad = |msg: String| Error::Mismatch { what: "instances.json".into(), msg };
    let cats: Vec<String> = manifest
        .settings
        .get("categories")
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .ok_or_else(|| bad("the manifest's settings.categories is missing or not a list of names".into()))?;
    let seed = manifest.settings.get("seed").and_then(|s| s.as_u64()).ok_or_else(|| bad("the manifest's settings.seed is missing".into()))?;
    let ids: BTreeMap<&str, usize> = cats.iter().enumerate().map(|(i, c)| (c.as_str(), i + 1)).collect();
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.index);
    let mut images = Vec::with_capacity(sorted.len());
    let mut annotations = Vec::new();
    for r in &sorted {
        images.push(ImageOut {
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
            let category_id = *ids.get(b.category.as_str()).ok_or_else(|| bad(format!("{}: box category {:?} is not a category of the run", record_name(r.index), b.category)))?;
            annotations.push(AnnotationOut {
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
    let doc = Instances {
        info: Info { description: "instagen generate", version: env!("CARGO_PKG_VERSION"), seed },
        categories: cats.iter().enumerate().map(|(i, c)| CategoryOut { id: i + 1, name: c, supercategory: "" }).collect(),
        images,
        annotations,
    };
    let mut v = serde_json::to_vec(&doc).map_err(|e| bad(e.to_string()))?;
    v.push(b'\n');
    Ok(v)
}

/// Removes temporary files (`.{name}.tmp-{pid}-{n}`, see `util::files::temp_path`) left in `dir` by processes that
/// are gone (a killed run); another live process's are kept.
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(0) };
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pos) = name.rfind(".tmp-").filter(|_| name.starts_with('.')) else { continue };
        let pid = name[pos + 5..].split('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| p == std::process::id() || Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let p: PathBuf = e.path();
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            n += 1;
        }
    }
    Ok(n)
}
