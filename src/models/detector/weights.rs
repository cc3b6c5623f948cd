//! Detector weights by torchvision's key names.
//!
//! Two layouts of safetensors files (a `.pth` becomes one with `tools/convert_weights.py`):
//! - [`Layout::Detector`]: a `fasterrcnn_resnet50_fpn`-style state dict (`backbone.body.*`, `backbone.fpn.*`,
//!   `rpn.*`, `roi_heads.*`), whose keys are the graph's `Param` names unchanged. Every parameter of the graph
//!   must be in the file with its shape, and every file key must be a parameter of the graph.
//! - [`Layout::ImagenetResnet`]: a torchvision ImageNet ResNet (`conv1.weight`, `bn1.running_mean`,
//!   `layer1.0.conv1.weight`, ..., `fc.*`), which initialises the body: each key `k` goes to `backbone.body.k`;
//!   `fc.*` (the classifier) is dropped. Every body parameter of the graph must be in the file; the rest of the
//!   model (FPN, heads) is not in such a file and comes from the caller's initialisation.
//!
//! In both, `*.num_batches_tracked` (a BatchNorm counter that `FrozenBatchNorm2d` drops when loading) is
//! ignored. Missing keys, unexpected keys, wrong shapes and non-float dtypes are all listed in one
//! `Error::Weights` naming the file. Floating tensors are converted to each `Param`'s dtype.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::backbone::BODY;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::models::weights::WeightFile;
use crate::params::ParamStore;

/// Which key names a weight file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// torchvision's detector state dict (the graph's names).
    Detector,
    /// torchvision's ImageNet ResNet classifier (body only).
    ImagenetResnet,
}

/// The graph parameter a file key loads into, or `None` for a key that is ignored.
pub fn module_key(layout: Layout, key: &str) -> Option<String> {
    if key.ends_with(".num_batches_tracked") || key == "num_batches_tracked" {
        return None;
    }
    match layout {
        Layout::Detector => Some(key.to_string()),
        Layout::ImagenetResnet => {
            if key.starts_with("fc.") {
                None
            } else {
                Some(format!("{BODY}.{key}"))
            }
        }
    }
}

/// Loads the parameters of `g` that `layout` covers from the safetensors file at `path` (see the module
/// comment): for `Detector` every parameter, for `ImagenetResnet` those under `backbone.body.`.
pub fn load(path: &Path, g: &Graph, layout: Layout) -> Result<ParamStore> {
    let file = WeightFile::open(path)?;
    load_from(&file, g, layout)
}

/// [`load`] from an opened file.
pub fn load_from(file: &WeightFile, g: &Graph, layout: Layout) -> Result<ParamStore> {
    let path = file.path();
    let werr = |msg: String| Error::Weights { path: path.to_path_buf(), msg };
    let wanted: BTreeMap<&str, crate::graph::NodeId> = (g.params().into_iter())
        .filter(|(_, n)| layout == Layout::Detector || n.starts_with(&format!("{BODY}.")))
        .map(|(id, n)| (n, id))
        .collect();
    let mut map: BTreeMap<String, String> = BTreeMap::new(); // module key -> file key
    let mut problems = Vec::new();
    for key in file.keys() {
        if let Some(m) = module_key(layout, key) {
            if !wanted.contains_key(m.as_str()) {
                let named = if m == key { format!("'{key}'") } else { format!("'{key}' (as '{m}')") };
                problems.push(format!("unexpected key {named} {:?}: the model has no such parameter", file.shape(key).unwrap_or(&[])));
            }
            map.insert(m, key.to_string());
        }
    }
    let mut store = ParamStore::new();
    let mut missing = BTreeSet::new();
    for (&name, &id) in &wanted {
        let n = g.node(id);
        let Some(fk) = map.get(name) else {
            missing.insert(format!("missing key '{}' {:?}", file_key_of(layout, name), n.shape));
            continue;
        };
        let named = if fk == name { format!("key '{fk}'") } else { format!("key '{fk}' (for '{name}')") };
        let fshape = file.shape(fk).unwrap_or(&[]);
        if fshape != n.shape.as_slice() {
            problems.push(format!("{named}: shape {fshape:?} in the file, the model wants {:?}", n.shape));
            continue;
        }
        match file.tensor(fk) {
            Ok(t) if t.dtype.is_float() => store.insert(name, t.cast(n.dtype)),
            Ok(t) => problems.push(format!("{named}: dtype {} is not a floating type", t.dtype)),
            Err(Error::Weights { msg, .. }) => problems.push(msg),
            Err(e) => return Err(e),
        }
    }
    problems.extend(missing);
    match problems.len() {
        0 => Ok(store),
        1 => Err(werr(problems.remove(0))),
        n => Err(werr(format!("{n} problems ({:?} layout):\n  {}", layout, problems.join("\n  ")))),
    }
}

/// The file key of a module key under `layout` (for messages).
fn file_key_of(layout: Layout, module: &str) -> String {
    match layout {
        Layout::Detector => module.to_string(),
        Layout::ImagenetResnet => module.strip_prefix(&format!("{BODY}.")).unwrap_or(module).to_string(),
    }
}
