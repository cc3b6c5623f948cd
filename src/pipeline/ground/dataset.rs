//! Grounding datasets: a folder of generated images described by a COCO instances file, each image carrying the
//! prompt it was generated from (and so the categories it names).
//!
//! A dataset folder `DIR` holds `DIR/instances.json`; image `file_name`s are relative to `DIR`. Per image, besides
//! COCO's fields:
//! - `prompt` (string): the generation prompt (`caption` when there is no `prompt`: a captioned corpus such as
//!   `instagen world make`'s);
//! - `categories` (optional, array of category names): the prompt's categories, in prompt order. Without it they
//!   are read from the prompt in InstaGen's form `"a photograph of A and B"` (the text after `"a photograph of "`
//!   split at the word `and`; an optional article `a`/`an` before a name is dropped);
//! - `latent` (optional, a safetensors file relative to `DIR` holding one tensor `latent`, `[h, w, 4]` or
//!   `[1, h, w, 4]` NHWC): the latent fed to the last (t=1) denoising step, from which the t=1 features are
//!   computed; without it the image is encoded (see `features.rs`).
//!
//! Labels (`ground label`'s output) are the same format: a COCO file whose annotations are the grounding boxes
//! (with the detector's `score`), whose images have an explicit `categories` field, and whose `info.image_root`
//! says where the images are (relative to the labels file's folder when relative).
//!
//! Bad input is an error naming the file, the record and the field: an empty category list, a name that is not a
//! category of the file, an annotation whose category is not among its image's prompt categories, a prompt that
//! names no category.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::detection::coco::{Dataset, Image, LoadOptions};
use crate::error::{Error, Result};

/// The instances file inside a dataset folder.
pub const INSTANCES: &str = "instances.json";
/// The prefix of InstaGen prompts.
pub const PROMPT_PREFIX: &str = "a photograph of ";

/// One image of a grounding dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct GroundImage {
    pub id: u64,
    /// The image file.
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub prompt: String,
    /// The prompt's categories (dataset category ids), in prompt order, without repeats.
    pub categories: Vec<u64>,
    /// The t=1 latent file, when the dataset has one.
    pub latent: Option<PathBuf>,
    /// Grounding boxes `[x1, y1, x2, y2]` in pixels with their category id and score (1 when absent).
    pub boxes: Vec<([f32; 4], u64, f32)>,
}

/// A loaded grounding dataset (or label file).
#[derive(Clone, Debug)]
pub struct GroundSet {
    /// The instances / labels JSON.
    pub source: PathBuf,
    /// Where image and latent file names are resolved.
    pub root: PathBuf,
    pub coco: Dataset,
    pub images: Vec<GroundImage>,
}

fn invalid(path: &Path, msg: String) -> Error {
    Error::Other(format!("{}: {msg}", path.display()))
}

/// Category names of a prompt `"a photograph of A and B"` (see the module documentation).
pub fn prompt_names(prompt: &str) -> Option<Vec<String>> {
    let rest = prompt.strip_prefix(PROMPT_PREFIX)?;
    // Words between the word "and"; an empty group (a leading, trailing or doubled "and") is no name.
    let mut names = vec![Vec::new()];
    for w in rest.split_whitespace() {
        if w == "and" {
            names.push(Vec::new());
        } else {
            names.last_mut().expect("one group").push(w);
        }
    }
    let names: Vec<String> = names
        .into_iter()
        .map(|mut g| {
            if g.len() > 1 && (g[0] == "a" || g[0] == "an") {
                g.remove(0);
            }
            g.join(" ")
        })
        .collect();
    (!names.iter().any(|n| n.is_empty())).then_some(names)
}

impl GroundSet {
    /// `DIR/instances.json` of a dataset folder, images checked to exist.
    pub fn open_dir(dir: &Path) -> Result<GroundSet> {
        if !dir.is_dir() {
            return Err(Error::io(dir, std::io::Error::other("not a dataset folder (want a folder with instances.json)")));
        }
        Self::load(&dir.join(INSTANCES), dir)
    }

    /// A labels file: images resolved against its `info.image_root`.
    pub fn open_labels(path: &Path) -> Result<GroundSet> {
        let text = crate::util::files::read_text(path, Some(crate::util::files::DATA_JSON_MAX_BYTES)).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| invalid(path, format!("malformed JSON: {}", crate::util::json::describe(text.as_bytes(), &e))))?;
        let root = v
            .get("info")
            .and_then(|i| i.get("image_root"))
            .and_then(|r| r.as_str())
            .ok_or_else(|| invalid(path, "field info.image_root (the image folder) is missing or not a string; write labels with `instagen ground label`".into()))?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let root = base.join(root);
        Self::load(path, &root)
    }

    /// Reads and validates `json` (COCO, strict) with images under `root`.
    pub fn load(json: &Path, root: &Path) -> Result<GroundSet> {
        let opts = LoadOptions { image_root: Some(root.to_path_buf()), ..LoadOptions::default() };
        let (coco, _) = Dataset::load(json, &opts)?;
        Self::from_coco(coco, json, root)
    }

    /// Builds the per-image view of a validated COCO dataset.
    pub fn from_coco(coco: Dataset, json: &Path, root: &Path) -> Result<GroundSet> {
        let by_name: HashMap<&str, u64> = coco.categories.iter().map(|c| (c.name.as_str(), c.id)).collect();
        let known = || coco.categories.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
        let mut images = Vec::with_capacity(coco.images.len());
        let mut index = HashMap::new();
        for (i, im) in coco.images.iter().enumerate() {
            let what = format!("images[{i}] (id {})", im.id);
            // A captioned corpus (`instagen world make`) has a `caption` where generated images have a `prompt`.
            let field = if im.extra.contains_key("prompt") || !im.extra.contains_key("caption") { "prompt" } else { "caption" };
            let prompt = match im.extra.get(field) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(_) => return Err(invalid(json, format!("{what}: field {field} is not a string"))),
                None => return Err(invalid(json, format!("{what}: field prompt is missing (the generation prompt, or a caption)"))),
            };
            let names: Vec<String> = match im.extra.get("categories") {
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(k, n)| {
                        n.as_str().map(str::to_string).ok_or_else(|| invalid(json, format!("{what}: field categories[{k}] is not a name (string)")))
                    })
                    .collect::<Result<_>>()?,
                Some(_) => return Err(invalid(json, format!("{what}: field categories is not an array of names"))),
                None => prompt_names(&prompt).ok_or_else(|| {
                    invalid(json, format!("{what}: field prompt {prompt:?} is not \"{PROMPT_PREFIX}A and B\"; give the image a 'categories' field"))
                })?,
            };
            if names.is_empty() {
                return Err(invalid(json, format!("{what}: field categories is empty (an image needs at least one category)")));
            }
            let mut cats = Vec::new();
            for n in &names {
                let id = *by_name.get(n.as_str()).ok_or_else(|| {
                    invalid(json, format!("{what}: field categories: {n:?} is not a category of this file (known: {})", known()))
                })?;
                if !cats.contains(&id) {
                    cats.push(id);
                }
            }
            let latent = match im.extra.get("latent") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(root.join(s)),
                Some(_) => return Err(invalid(json, format!("{what}: field latent is not a file name"))),
            };
            index.insert(im.id, images.len());
            images.push(GroundImage {
                id: im.id,
                path: coco.image_path(root, im),
                width: im.width,
                height: im.height,
                prompt,
                categories: cats,
                latent,
                boxes: Vec::new(),
            });
        }
        for (i, a) in coco.annotations.iter().enumerate() {
            let k = index[&a.image_id];
            let img = &mut images[k];
            if !img.categories.contains(&a.category_id) {
                let name = coco.categories.iter().find(|c| c.id == a.category_id).map_or("?", |c| c.name.as_str());
                return Err(invalid(
                    json,
                    format!(
                        "annotations[{i}] (id {}, image {}): field category_id {} ({name:?}) is not one of the image's prompt categories {:?}",
                        a.id, a.image_id, a.category_id, img.categories
                    ),
                ));
            }
            let [x1, y1, x2, y2] = crate::detection::coco::xywh_to_xyxy(a.bbox);
            img.boxes.push(([x1 as f32, y1 as f32, x2 as f32, y2 as f32], a.category_id, a.score.unwrap_or(1.0) as f32));
        }
        Ok(GroundSet { source: json.to_path_buf(), root: root.to_path_buf(), coco, images })
    }

    /// The category name of `id`.
    pub fn name(&self, id: u64) -> &str {
        self.coco.categories.iter().find(|c| c.id == id).map_or("?", |c| c.name.as_str())
    }

    /// The category id of `name`, or an error naming `what` (a flag or field) and the known names.
    pub fn category_id(&self, name: &str, what: &str) -> Result<u64> {
        self.coco.categories.iter().find(|c| c.name == name).map(|c| c.id).ok_or_else(|| {
            let known: Vec<&str> = self.coco.categories.iter().map(|c| c.name.as_str()).collect();
            invalid(&self.source, format!("{what}: {name:?} is not a category of this file (known: {})", known.join(", ")))
        })
    }
}

/// The COCO image record of a grounding image with its explicit `categories` (names) field.
pub fn image_record(set: &GroundSet, im: &Image, g: &GroundImage) -> Image {
    let mut out = im.clone();
    let names: Vec<serde_json::Value> = g.categories.iter().map(|&c| serde_json::Value::String(set.name(c).to_string())).collect();
    out.extra.insert("categories".into(), serde_json::Value::Array(names));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_names_follow_instagen_prompts() {
        assert_eq!(prompt_names("a photograph of dog and cat"), Some(vec!["dog".to_string(), "cat".to_string()]));
        assert_eq!(prompt_names("a photograph of a hot dog"), Some(vec!["hot dog".to_string()]));
        assert_eq!(prompt_names("a photograph of an apple and a tv"), Some(vec!["apple".to_string(), "tv".to_string()]));
        assert_eq!(prompt_names("a painting of dog"), None);
        assert_eq!(prompt_names("a photograph of dog and "), None);
        assert_eq!(prompt_names("a photograph of dog and and cat"), None);
        assert_eq!(prompt_names("a photograph of "), None);
    }
}
