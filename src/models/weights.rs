//! Loading Stable Diffusion v1.x weights: a diffusers folder or a CompVis single-file checkpoint (safetensors),
//! both mapped to the same module keys (the diffusers / transformers names, which are the graphs' `Param` names).
//!
//! - diffusers folder: `model_index.json` (optional), `text_encoder/{config.json, model.safetensors}`,
//!   `vae/` and `unet/` with `config.json` + `diffusion_pytorch_model.safetensors`, each also accepted as the
//!   `.fp16.safetensors` variant; `tokenizer/`, `scheduler/`.
//! - CompVis file: `cond_stage_model.transformer.*` (the transformers CLIP text model), `first_stage_model.*`
//!   (the ldm VAE, renamed as diffusers' converter does), `model.diffusion_model.*` (the UNet, renamed by
//!   [`crate::models::unet::compvis_key`]). No configs: SD v1.x defaults unless set with `with_*_config`.
//!
//! Loading is checked against a graph's `Param` nodes before anything runs: a missing key, a shape or dtype that
//! cannot fit, or a truncated file is an error naming the key, the file and both shapes. Floating tensors are
//! converted to the dtype each `Param` declares (f16 <-> f32 <-> bf16).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::models::config::{ClipTextConfig, ModelIndex, VaeConfig};
use crate::params::ParamStore;
use crate::tensor::{DType, HostTensor};

fn werr(path: &Path, msg: impl Into<String>) -> Error {
    Error::Weights { path: path.to_path_buf(), msg: msg.into() }
}

/// Where one tensor lies in a [`WeightFile`].
#[derive(Clone, Debug)]
struct TensorEntry {
    /// `None` for a dtype the engine does not store (an error only if the tensor is needed).
    dtype: Option<DType>,
    st_dtype: safetensors::Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// A safetensors file read into memory with its header validated (a truncated file fails here).
pub struct WeightFile {
    path: PathBuf,
    bytes: Vec<u8>,
    entries: BTreeMap<String, TensorEntry>,
}

impl std::fmt::Debug for WeightFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightFile").field("path", &self.path).field("tensors", &self.entries.len()).finish()
    }
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = crate::util::files::read_input(path, None).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(path, bytes)
    }

    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| werr(path, crate::params::safetensors_error(&bytes, &e)))?;
        let base = bytes.as_ptr() as usize;
        let mut entries = BTreeMap::new();
        for (name, view) in st.tensors() {
            let start = view.data().as_ptr() as usize - base;
            let entry = TensorEntry {
                dtype: DType::from_safetensors(view.dtype()),
                st_dtype: view.dtype(),
                shape: view.shape().to_vec(),
                start,
                end: start + view.data().len(),
            };
            entries.insert(name, entry);
        }
        Ok(WeightFile { path: path.to_path_buf(), bytes, entries })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|k| k.as_str())
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// The shape of a tensor in the file.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.entries.get(key).map(|e| e.shape.as_slice())
    }

    /// A tensor as stored (its own dtype and shape).
    pub fn tensor(&self, key: &str) -> Result<HostTensor> {
        let e = self.entries.get(key).ok_or_else(|| werr(&self.path, format!("key '{key}' is not in the file")))?;
        let dtype = e.dtype.ok_or_else(|| {
            werr(&self.path, format!("key '{key}': dtype {:?} {:?} is not one the engine stores", e.st_dtype, e.shape))
        })?;
        HostTensor::from_bytes(&e.shape, dtype, self.bytes[e.start..e.end].to_vec())
            .map_err(|err| werr(&self.path, format!("key '{key}': {err}")))
    }
}

/// The three weight-bearing components of an SD v1.x pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    TextEncoder,
    Vae,
    Unet,
}

impl Component {
    pub fn subfolder(self) -> &'static str {
        match self {
            Component::TextEncoder => "text_encoder",
            Component::Vae => "vae",
            Component::Unet => "unet",
        }
    }
    /// The weights file a diffusers folder holds for this component (`model.safetensors` or
    /// `diffusion_pytorch_model.safetensors`).
    pub fn file_name(self) -> String {
        format!("{}.safetensors", self.file_stem())
    }
    fn file_stem(self) -> &'static str {
        match self {
            Component::TextEncoder => "model",
            Component::Vae | Component::Unet => "diffusion_pytorch_model",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Diffusers,
    CompVis,
}

/// Module key of a transformers CLIP text model tensor, given its key in a `text_encoder/` file or after the
/// CompVis prefix: `text_model.` is added when missing (transformers 5 saves without it, the Hub files and
/// CompVis checkpoints have it); the `position_ids` buffer is not a weight.
pub fn clip_module_key(key: &str) -> Option<String> {
    let k = key.strip_prefix("text_model.").unwrap_or(key);
    let known = ["embeddings.token_embedding.", "embeddings.position_embedding.", "encoder.layers.", "final_layer_norm."];
    if !known.iter().any(|p| k.starts_with(p)) {
        return None;
    }
    Some(format!("text_model.{k}"))
}

/// Module key of a diffusers `AutoencoderKL` tensor: identity, except the attention names of diffusers < 0.14
/// (`query`, `key`, `value`, `proj_attn`) which some SD v1.x `vae/` files still use.
pub fn vae_module_key(key: &str) -> String {
    let old = [(".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.")];
    if key.contains(".attentions.") {
        for (from, to) in old {
            if key.contains(from) {
                return key.replacen(from, to, 1);
            }
        }
    }
    key.to_string()
}

/// The diffusers key of a CompVis (ldm) VAE tensor, `key` without the `first_stage_model.` prefix; `n_up` is the
/// number of decoder up blocks (CompVis numbers them by level, 0 = full resolution and run last; diffusers in
/// the order they run).
pub fn vae_compvis_key(key: &str, n_up: usize) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    let (side, rest) = match parts.first() {
        Some(&s @ ("encoder" | "decoder")) => (s, &parts[1..]),
        _ => {
            return match key {
                k if k.starts_with("quant_conv.") || k.starts_with("post_quant_conv.") => Some(k.to_string()),
                _ => None,
            };
        }
    };
    let resnet_tail = |t: &[&str]| -> String {
        t.iter().map(|p| if *p == "nin_shortcut" { "conv_shortcut" } else { p }).collect::<Vec<_>>().join(".")
    };
    let mapped = match rest {
        ["conv_in" | "conv_out", ..] => rest.join("."),
        ["norm_out", tail @ ..] => format!("conv_norm_out.{}", tail.join(".")),
        ["down", i, "block", j, tail @ ..] => format!("down_blocks.{i}.resnets.{j}.{}", resnet_tail(tail)),
        ["down", i, "downsample", "conv", tail @ ..] => format!("down_blocks.{i}.downsamplers.0.conv.{}", tail.join(".")),
        ["up", i, kind, tail @ ..] => {
            let i: usize = i.parse().ok()?;
            let d = n_up.checked_sub(1 + i)?;
            match (*kind, tail) {
                ("block", [j, t @ ..]) => format!("up_blocks.{d}.resnets.{j}.{}", resnet_tail(t)),
                ("upsample", ["conv", t @ ..]) => format!("up_blocks.{d}.upsamplers.0.conv.{}", t.join(".")),
                _ => return None,
            }
        }
        ["mid", "block_1", tail @ ..] => format!("mid_block.resnets.0.{}", resnet_tail(tail)),
        ["mid", "block_2", tail @ ..] => format!("mid_block.resnets.1.{}", resnet_tail(tail)),
        ["mid", "attn_1", m, tail @ ..] => {
            let m = match *m {
                "norm" => "group_norm",
                "q" => "to_q",
                "k" => "to_k",
                "v" => "to_v",
                "proj_out" => "to_out.0",
                _ => return None,
            };
            format!("mid_block.attentions.0.{m}.{}", tail.join("."))
        }
        _ => return None,
    };
    Some(format!("{side}.{mapped}"))
}

/// The weights of one component: a file and the map from module keys (graph `Param` names) to file keys.
#[derive(Clone, Debug)]
pub struct ComponentWeights {
    file: Arc<WeightFile>,
    component: Component,
    layout: Layout,
    /// module key -> file key
    map: BTreeMap<String, String>,
}

impl ComponentWeights {
    /// Map every tensor of `file` that belongs to `component` under `layout`.
    pub fn new(file: Arc<WeightFile>, component: Component, layout: Layout) -> Result<Self> {
        let mut map = BTreeMap::new();
        let n_up = match (component, layout) {
            (Component::Vae, Layout::CompVis) => (file.keys())
                .filter_map(|k| k.strip_prefix("first_stage_model.decoder.up."))
                .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
                .max()
                .map_or(0, |m| m + 1),
            _ => 0,
        };
        for fk in file.keys() {
            let mk = match (component, layout) {
                (Component::TextEncoder, Layout::Diffusers) => clip_module_key(fk),
                (Component::Vae, Layout::Diffusers) | (Component::Unet, Layout::Diffusers) => {
                    Some(if component == Component::Vae { vae_module_key(fk) } else { fk.to_string() })
                }
                (Component::TextEncoder, Layout::CompVis) => {
                    fk.strip_prefix("cond_stage_model.transformer.").and_then(clip_module_key)
                }
                (Component::Vae, Layout::CompVis) => {
                    fk.strip_prefix("first_stage_model.").and_then(|r| vae_compvis_key(r, n_up))
                }
                (Component::Unet, Layout::CompVis) => {
                    if fk.starts_with("model.diffusion_model.") { crate::models::unet::compvis_key(fk) } else { None }
                }
            };
            if let Some(mk) = mk {
                if let Some(prev) = map.insert(mk.clone(), fk.to_string()) {
                    return Err(werr(file.path(), format!("keys '{prev}' and '{fk}' both map to '{mk}'")));
                }
            }
        }
        if map.is_empty() {
            return Err(werr(file.path(), format!("no {} weights in this file ({layout:?} layout)", component.subfolder())));
        }
        Ok(ComponentWeights { file, component, layout, map })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }
    pub fn component(&self) -> Component {
        self.component
    }
    pub fn layout(&self) -> Layout {
        self.layout
    }
    /// Module keys present, in order.
    pub fn module_keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(|k| k.as_str())
    }
    /// The file key a module key is read from.
    pub fn file_key(&self, module_key: &str) -> Option<&str> {
        self.map.get(module_key).map(|k| k.as_str())
    }

    /// One tensor by module key, with the shape and dtype a graph wants. The file's shape must equal `shape`,
    /// or be `shape` followed by 1s (CompVis stores the VAE attention projections as 1x1 convs).
    pub fn load(&self, module_key: &str, shape: &[usize], dtype: DType) -> Result<HostTensor> {
        let path = self.file.path();
        let Some(fk) = self.map.get(module_key) else {
            return Err(werr(path, format!("missing key '{module_key}' ({} weights, {:?} layout): the graph wants \
                {dtype} {shape:?}", self.component.subfolder(), self.layout)));
        };
        let named = if fk == module_key { format!("key '{fk}'") } else { format!("key '{fk}' (for '{module_key}')") };
        let e = &self.file.entries[fk];
        let fits = e.shape == shape
            || (e.shape.len() > shape.len() && e.shape[..shape.len()] == *shape && e.shape[shape.len()..].iter().all(|&d| d == 1));
        if !fits {
            return Err(werr(path, format!("{named}: shape {:?} in the file, the graph wants {shape:?}", e.shape)));
        }
        let fdt = e.dtype.filter(|d| d.is_float() == dtype.is_float() && (d.is_float() || *d == dtype));
        if fdt.is_none() {
            return Err(werr(path, format!("{named}: dtype {:?} {:?} in the file cannot be loaded as {dtype} {shape:?}",
                e.st_dtype, e.shape)));
        }
        let mut t = self.file.tensor(fk)?;
        t.shape = shape.to_vec();
        Ok(t.cast(dtype))
    }

    /// Every parameter of `g`, read and converted to the dtype its node declares. All keys are checked before
    /// any tensor is converted, and every problem is listed in one error.
    pub fn load_for(&self, g: &Graph) -> Result<ParamStore> {
        let mut store = ParamStore::new();
        let mut problems = Vec::new();
        for (id, name) in g.params() {
            let n = g.node(id);
            match self.load(name, &n.shape, n.dtype) {
                Ok(t) => store.insert(name, t),
                Err(Error::Weights { msg, .. }) => problems.push(msg),
                Err(e) => return Err(e),
            }
        }
        match problems.len() {
            0 => Ok(store),
            1 => Err(werr(self.path(), problems.remove(0))),
            n => Err(werr(self.path(), format!("{n} problems:\n  {}", problems.join("\n  ")))),
        }
    }

    /// Module keys of this component that `g` does not use (e.g. a config with fewer layers than the file).
    pub fn unused_by(&self, g: &Graph) -> Vec<String> {
        let used: std::collections::HashSet<&str> = g.params().into_iter().map(|(_, n)| n).collect();
        self.map.keys().filter(|k| !used.contains(k.as_str())).cloned().collect()
    }
}

/// An SD v1.x checkpoint: a diffusers folder or a CompVis single file, with the component configs.
#[derive(Debug)]
pub struct SdCheckpoint {
    root: PathBuf,
    layout: Layout,
    /// The one file of a CompVis checkpoint.
    single: Option<Arc<WeightFile>>,
    pub index: Option<ModelIndex>,
    pub text_config: ClipTextConfig,
    pub vae_config: VaeConfig,
}

impl SdCheckpoint {
    /// A directory is a diffusers folder; a file is a CompVis single-file checkpoint (safetensors).
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::open_diffusers(path)
        } else {
            Self::open_compvis(path)
        }
    }

    pub fn open_diffusers(root: &Path) -> Result<Self> {
        let index_path = root.join("model_index.json");
        let index = if index_path.exists() { Some(ModelIndex::from_file(&index_path)?) } else { None };
        if !root.join("text_encoder").is_dir() && !root.join("vae").is_dir() && !root.join("unet").is_dir() {
            return Err(werr(root, "not a diffusers folder: no text_encoder/, vae/ or unet/ subfolder"));
        }
        // A component folder must carry its config.json: SD v1.x defaults are for CompVis files only.
        let text_config = match Self::config_path(root, Component::TextEncoder)? {
            Some(p) => ClipTextConfig::from_file(&p)?,
            None => ClipTextConfig::default(),
        };
        let vae_config = match Self::config_path(root, Component::Vae)? {
            Some(p) => VaeConfig::from_file(&p)?,
            None => VaeConfig::default(),
        };
        Ok(SdCheckpoint { root: root.to_path_buf(), layout: Layout::Diffusers, single: None, index, text_config, vae_config })
    }

    /// `root/<component>/config.json`; `None` when the component folder is absent (its weights are then missing
    /// too, an error when they are asked for), an error when the folder is there without its config.
    fn config_path(root: &Path, c: Component) -> Result<Option<PathBuf>> {
        let dir = root.join(c.subfolder());
        let p = dir.join("config.json");
        match (dir.is_dir(), p.exists()) {
            (false, _) => Ok(None),
            (true, true) => Ok(Some(p)),
            (true, false) => Err(werr(&p, format!("missing: the {} config of this diffusers folder", c.subfolder()))),
        }
    }

    pub fn open_compvis(file: &Path) -> Result<Self> {
        let f = Arc::new(WeightFile::open(file)?);
        Ok(SdCheckpoint {
            root: file.to_path_buf(),
            layout: Layout::CompVis,
            single: Some(f),
            index: None,
            text_config: ClipTextConfig::default(),
            vae_config: VaeConfig::default(),
        })
    }

    pub fn with_text_config(mut self, c: ClipTextConfig) -> Self {
        self.text_config = c;
        self
    }
    pub fn with_vae_config(mut self, c: VaeConfig) -> Self {
        self.vae_config = c;
        self
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The safetensors file of a diffusers component: `<stem>.safetensors`, else `<stem>.fp16.safetensors`.
    pub fn component_file(&self, c: Component) -> Result<PathBuf> {
        let dir = self.root.join(c.subfolder());
        let names = [format!("{}.safetensors", c.file_stem()), format!("{}.fp16.safetensors", c.file_stem())];
        // `exists`, not `is_file`: a link to a device is taken, and reading it says what it is.
        names.iter().map(|n| dir.join(n)).find(|p| p.exists()).ok_or_else(|| {
            werr(&dir, format!("no {} or {} (sharded and .bin checkpoints are not supported)", names[0], names[1]))
        })
    }

    /// The weights of one component (for a diffusers folder this reads that component's file).
    pub fn component(&self, c: Component) -> Result<ComponentWeights> {
        let file = match &self.single {
            Some(f) => f.clone(),
            None => Arc::new(WeightFile::open(&self.component_file(c)?)?),
        };
        ComponentWeights::new(file, c, self.layout)
    }

    /// `tokenizer/` of a diffusers folder, when present.
    pub fn tokenizer_dir(&self) -> Option<PathBuf> {
        let d = self.root.join("tokenizer");
        (self.layout == Layout::Diffusers && d.is_dir()).then_some(d)
    }
    /// `scheduler/scheduler_config.json` of a diffusers folder, when present.
    pub fn scheduler_config(&self) -> Option<PathBuf> {
        let p = self.root.join("scheduler/scheduler_config.json");
        (self.layout == Layout::Diffusers && p.exists()).then_some(p)
    }
    /// The UNet config: `unet/config.json` of a diffusers folder (an error naming it when it is missing), SD v1.x
    /// for a CompVis file.
    pub fn unet_config(&self) -> Result<crate::models::unet::UNetConfig> {
        use crate::models::unet::UNetConfig;
        if self.layout == Layout::CompVis {
            return Ok(UNetConfig::sd_v1());
        }
        let p = self.root.join("unet/config.json");
        if !p.exists() {
            return Err(werr(&p, "missing: the unet config of this diffusers folder"));
        }
        UNetConfig::from_file(&p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compvis_vae_names() {
        let cases = [
            ("encoder.down.1.block.0.nin_shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
            ("encoder.down.0.downsample.conv.bias", "encoder.down_blocks.0.downsamplers.0.conv.bias"),
            ("encoder.norm_out.weight", "encoder.conv_norm_out.weight"),
            ("decoder.up.3.block.2.conv1.weight", "decoder.up_blocks.0.resnets.2.conv1.weight"),
            ("decoder.up.1.upsample.conv.weight", "decoder.up_blocks.2.upsamplers.0.conv.weight"),
            ("decoder.mid.block_2.norm1.bias", "decoder.mid_block.resnets.1.norm1.bias"),
            ("decoder.mid.attn_1.proj_out.weight", "decoder.mid_block.attentions.0.to_out.0.weight"),
            ("encoder.mid.attn_1.norm.bias", "encoder.mid_block.attentions.0.group_norm.bias"),
            ("quant_conv.weight", "quant_conv.weight"),
        ];
        for (ldm, diff) in cases {
            assert_eq!(vae_compvis_key(ldm, 4).as_deref(), Some(diff), "{ldm}");
        }
        assert_eq!(vae_compvis_key("decoder.up.4.block.0.conv1.weight", 4), None);
        assert_eq!(vae_compvis_key("loss.logvar", 4), None);
    }

    #[test]
    fn clip_and_old_vae_names() {
        assert_eq!(clip_module_key("encoder.layers.3.mlp.fc1.weight").as_deref(), Some("text_model.encoder.layers.3.mlp.fc1.weight"));
        assert_eq!(clip_module_key("text_model.final_layer_norm.bias").as_deref(), Some("text_model.final_layer_norm.bias"));
        assert_eq!(clip_module_key("text_model.embeddings.position_ids"), None);
        assert_eq!(vae_module_key("decoder.mid_block.attentions.0.proj_attn.bias"), "decoder.mid_block.attentions.0.to_out.0.bias");
        assert_eq!(vae_module_key("decoder.mid_block.attentions.0.key.weight"), "decoder.mid_block.attentions.0.to_k.weight");
    }

    #[test]
    fn converts_dtype_and_squeezes_trailing_ones() {
        let mut s = ParamStore::new();
        s.insert("first_stage_model.decoder.mid.attn_1.q.weight", HostTensor::from_f32(&[2, 2, 1, 1], DType::F32, &[1.0, 2.0, 3.0, 0.1]).unwrap());
        s.insert("first_stage_model.quant_conv.bias", HostTensor::from_f32(&[2], DType::F16, &[0.5, -1.0]).unwrap());
        let dir = std::env::temp_dir().join(format!("instagen_weights_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.safetensors");
        s.save_safetensors(&p).unwrap();
        let w = ComponentWeights::new(Arc::new(WeightFile::open(&p).unwrap()), Component::Vae, Layout::CompVis).unwrap();
        let q = w.load("decoder.mid_block.attentions.0.to_q.weight", &[2, 2], DType::F16).unwrap();
        assert_eq!((q.shape.as_slice(), q.dtype), (&[2usize, 2][..], DType::F16));
        assert_eq!(q.to_f32(), vec![1.0, 2.0, 3.0, half::f16::from_f32(0.1).to_f32()]);
        let b = w.load("quant_conv.bias", &[2], DType::F32).unwrap();
        assert_eq!(b.to_f32(), vec![0.5, -1.0]);
        let e = w.load("quant_conv.bias", &[3], DType::F32).unwrap_err().to_string();
        assert!(e.contains("first_stage_model.quant_conv.bias") && e.contains("[2]") && e.contains("[3]"), "{e}");
        let e = w.load("quant_conv.bias", &[2], DType::I64).unwrap_err().to_string();
        assert!(e.contains("cannot be loaded as i64"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
