//! `instagen sd init`: a complete diffusers Stable Diffusion folder with freshly initialised weights, from one
//! config file that sets the sizes of the three models (`configs/world_sd.json`).
//!
//! The config is one JSON object with four objects: `text_encoder` (transformers `CLIPTextConfig`), `vae`
//! (diffusers `AutoencoderKL`), `unet` (`UNet2DConditionModel`) and `scheduler`; each is written as the
//! component's `config.json` (`scheduler/scheduler_config.json`) with the class name fields the Hugging Face
//! loaders want added, after the engine's own config parsers accept it and the three fit together (CLIP width =
//! cross-attention width, VAE latent channels = UNet channels, VAE sample size / downscale = UNet sample size).
//! Weights are built by walking the `Param` nodes of the models' own graphs, so every key is one the loaders ask
//! for. `tokenizer/` gets `vocab.json` + `merges.txt` derived from CLIP's `bpe_simple_vocab_16e6.txt.gz` (the
//! real 49,408-token vocabulary; read from the shared data folder, written into the output folder only).
//!
//! Initialisation, per layer type, as the PyTorch classes do it by default:
//! - `nn.Conv2d` / `nn.Linear` weight and bias uniform in `±1/sqrt(fan_in)` (`kaiming_uniform_(a=sqrt(5))` and the
//!   bias rule; fan_in = in_channels x kh x kw); `GroupNorm` / `LayerNorm` weight 1, bias 0; `nn.Embedding`
//!   N(0, 1). diffusers applies no init of its own to the UNet and VAE, so these are what it builds.
//! - The text encoder takes the same defaults ([`TextInit::Torch`]) unless `--text-init clip` asks for
//!   transformers' `CLIPPreTrainedModel._init_weights` (factor 1): token and position embeddings N(0, 0.02); q/k/v
//!   projections N(0, d^-0.5 (2L)^-0.5), out_proj N(0, d^-0.5), fc1 N(0, (2d)^-0.5), fc2 N(0, d^-0.5 (2L)^-0.5)
//!   with d the width and L the layer count; Linear biases 0; LayerNorm 1 / 0. The encoder stays frozen at its
//!   init, and with CLIP's 0.02 embeddings the normalised attention and MLP outputs swamp the token identity:
//!   the world's 12 names then get name-token cosine similarities of 0.96 on average (0.41 with PyTorch's
//!   defaults; `instagen sd text-sims`).
//!
//! Each tensor's values come from a generator seeded by (seed, component, parameter name), so they do not depend
//! on the order the graphs list them in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::models::clip_text::ClipTextModel;
use crate::models::config::{ClipTextConfig, VaeConfig};
use crate::models::scheduler::{DdimConfig, DdimScheduler};
use crate::models::tokenizer::{read_bpe_gz, VOCAB_SIZE};
use crate::models::unet::{self, UNetConfig, UNetShape};
use crate::models::vae::Vae;
use crate::params::ParamStore;
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// The `diffusers` version written into the configs (the one the parity fixtures were made with).
const DIFFUSERS_VERSION: &str = "0.42.1";

fn cfg_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Weights { path: path.to_path_buf(), msg: msg.into() }
}

/// The four parsed sections of an `sd init` config, each with the JSON object it came from.
#[derive(Clone, Debug)]
pub struct SdConfig {
    pub text: ClipTextConfig,
    pub vae: VaeConfig,
    pub unet: UNetConfig,
    pub scheduler: DdimConfig,
    json: BTreeMap<String, serde_json::Map<String, Value>>,
}

const SECTIONS: [&str; 4] = ["text_encoder", "vae", "unet", "scheduler"];

impl SdConfig {
    /// Reads and checks a config file (see the module doc); errors name the file and the section or key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::util::files::read_text(path, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(path, e))?;
        let v: serde_json::Map<String, Value> = crate::util::json::from_object(&text).map_err(|e| cfg_err(path, format!("sd config: {e}")))?;
        if let Some(k) = v.keys().find(|k| !SECTIONS.contains(&k.as_str())) {
            return Err(cfg_err(path, format!("sd config: unknown section '{k}' (sections: {})", SECTIONS.join(", "))));
        }
        let mut json = BTreeMap::new();
        for s in SECTIONS {
            match v.get(s) {
                Some(Value::Object(o)) => {
                    json.insert(s.to_string(), o.clone());
                }
                Some(_) => return Err(cfg_err(path, format!("sd config: section '{s}' is not a JSON object"))),
                None => return Err(cfg_err(path, format!("sd config: section '{s}' is missing"))),
            }
        }
        let text_of = |s: &str| Value::Object(json[s].clone()).to_string();
        let at = |s: &str, e: String| cfg_err(path, format!("sd config: section '{s}': {e}"));
        let text: ClipTextConfig = crate::util::json::from_object(&text_of("text_encoder")).map_err(|e| at("text_encoder", e))?;
        text.validate(Some(path))?;
        let vae: VaeConfig = crate::util::json::from_object(&text_of("vae")).map_err(|e| at("vae", e))?;
        vae.validate(Some(path))?;
        let unet = UNetConfig::from_json(&text_of("unet"), path)?;
        let scheduler = DdimConfig::from_json(&text_of("scheduler"), path)?;
        DdimScheduler::new(scheduler.clone(), path)?;
        let c = SdConfig { text, vae, unet, scheduler, json };
        c.check_fit().map_err(|msg| cfg_err(path, format!("sd config: {msg}")))?;
        Ok(c)
    }

    fn check_fit(&self) -> std::result::Result<(), String> {
        let (t, v, u) = (&self.text, &self.vae, &self.unet);
        if t.vocab_size != VOCAB_SIZE {
            return Err(format!("text_encoder.vocab_size {} must be {VOCAB_SIZE} (the CLIP tokenizer's vocabulary)", t.vocab_size));
        }
        if t.max_position_embeddings < crate::models::tokenizer::MAX_LEN {
            return Err(format!("text_encoder.max_position_embeddings {} < the tokenizer's 77 tokens", t.max_position_embeddings));
        }
        if u.cross_attention_dim != t.hidden_size {
            return Err(format!("unet.cross_attention_dim {} != text_encoder.hidden_size {}", u.cross_attention_dim, t.hidden_size));
        }
        if u.in_channels != v.latent_channels || u.out_channels != v.latent_channels {
            return Err(format!(
                "unet.in_channels {} / out_channels {} must equal vae.latent_channels {}",
                u.in_channels, u.out_channels, v.latent_channels
            ));
        }
        let f = v.downscale();
        if v.sample_size % f != 0 || v.sample_size / f != u.sample_size {
            return Err(format!(
                "vae.sample_size {} / the VAE's downscale {f} must equal unet.sample_size {}",
                v.sample_size, u.sample_size
            ));
        }
        let levels = 1usize << (u.block_out_channels.len() - 1);
        if u.sample_size % levels != 0 {
            return Err(format!("unet.sample_size {} is not a multiple of the UNet's downsampling {levels}", u.sample_size));
        }
        Ok(())
    }

    /// The image side the models are built for (`vae.sample_size`).
    pub fn resolution(&self) -> usize {
        self.vae.sample_size
    }

    /// The component config as written (`section` of the file plus the class name fields).
    fn component_json(&self, section: &str) -> Value {
        let mut o = self.json[section].clone();
        let mut add = |k: &str, v: Value| {
            o.entry(k.to_string()).or_insert(v);
        };
        match section {
            "text_encoder" => {
                add("architectures", json!(["CLIPTextModel"]));
                add("model_type", json!("clip_text_model"));
            }
            "vae" => {
                add("_class_name", json!("AutoencoderKL"));
                add("_diffusers_version", json!(DIFFUSERS_VERSION));
            }
            "unet" => {
                add("_class_name", json!("UNet2DConditionModel"));
                add("_diffusers_version", json!(DIFFUSERS_VERSION));
            }
            _ => {
                add("_class_name", json!("DDIMScheduler"));
                add("_diffusers_version", json!(DIFFUSERS_VERSION));
            }
        }
        Value::Object(o)
    }
}

/// Which init rules a component's parameters follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InitRule {
    /// PyTorch's defaults for Conv2d / Linear / GroupNorm / LayerNorm (diffusers models).
    TorchDefault,
    /// transformers' `CLIPPreTrainedModel._init_weights`.
    Clip { width: usize, layers: usize },
}

fn name_seed(seed: u64, component: &str, name: &str) -> u64 {
    // FNV-1a over "component/name", mixed with the seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in component.bytes().chain(std::iter::once(b'/')).chain(name.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Rng::new(seed ^ h).next_u64()
}

/// Fresh values for every `Param` of `graphs` under `rule` (f32). A parameter whose kind the rule does not know
/// is an error naming it.
fn init_component(graphs: &[&Graph], component: &str, rule: InitRule, seed: u64) -> Result<ParamStore> {
    let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for g in graphs {
        for (id, name) in g.params() {
            shapes.insert(name.to_string(), g.node(id).shape.clone());
        }
    }
    let mut store = ParamStore::new();
    for (name, shape) in &shapes {
        let numel: usize = shape.iter().product();
        let mut rng = Rng::new(name_seed(seed, component, name));
        let unknown = || Error::Other(format!("sd init: no init rule for {component} parameter '{name}' {shape:?}"));
        let (prefix, kind) = name.rsplit_once('.').ok_or_else(unknown)?;
        let weight_shape = shapes.get(&format!("{prefix}.weight"));
        let is_norm = weight_shape.is_some_and(|s| s.len() == 1);
        let vals = match rule {
            InitRule::TorchDefault => match kind {
                _ if is_norm => vec![if kind == "weight" { 1.0 } else { 0.0 }; numel],
                // nn.Embedding: N(0, 1).
                "weight" if prefix.ends_with("_embedding") => rng.normal_vec(numel, 1.0),
                "weight" | "bias" => {
                    let w = weight_shape.ok_or_else(unknown)?;
                    let fan_in: usize = w.iter().skip(1).product::<usize>().max(1);
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    rng.uniform_vec(numel, -bound, bound)
                }
                _ => return Err(unknown()),
            },
            InitRule::Clip { width, layers } => {
                let d = width as f32;
                let in_std = d.powf(-0.5) * ((2 * layers) as f32).powf(-0.5);
                match kind {
                    _ if is_norm => vec![if kind == "weight" { 1.0 } else { 0.0 }; numel],
                    "bias" => vec![0.0; numel],
                    "weight" if prefix.ends_with("token_embedding") || prefix.ends_with("position_embedding") => rng.normal_vec(numel, 0.02),
                    "weight" if prefix.ends_with("q_proj") || prefix.ends_with("k_proj") || prefix.ends_with("v_proj") => rng.normal_vec(numel, in_std),
                    "weight" if prefix.ends_with("out_proj") => rng.normal_vec(numel, d.powf(-0.5)),
                    "weight" if prefix.ends_with("fc1") => rng.normal_vec(numel, (2.0 * d).powf(-0.5)),
                    "weight" if prefix.ends_with("fc2") => rng.normal_vec(numel, in_std),
                    _ => return Err(unknown()),
                }
            }
        };
        store.insert(name, HostTensor::from_f32(shape, DType::F32, &vals)?);
    }
    Ok(store)
}

/// How the text encoder is initialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextInit {
    /// PyTorch's per-layer defaults, as for the UNet and VAE (`nn.Embedding` N(0, 1), `nn.Linear` uniform
    /// `±1/sqrt(fan_in)` weight and bias, `LayerNorm` 1 / 0).
    Torch,
    /// transformers' `CLIPPreTrainedModel._init_weights` (embeddings N(0, 0.02), scaled normal projections).
    Clip,
}

impl TextInit {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "torch" => Ok(TextInit::Torch),
            "clip" => Ok(TextInit::Clip),
            _ => Err(Error::Mismatch { what: "--text-init".into(), msg: format!("'{s}' (torch or clip)") }),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            TextInit::Torch => "torch",
            TextInit::Clip => "clip",
        }
    }
}

/// The initialised weights of the three models: (text encoder, VAE, UNet), f32.
pub fn init_weights(cfg: &SdConfig, seed: u64, text_init: TextInit) -> Result<(ParamStore, ParamStore, ParamStore)> {
    let clip = ClipTextModel::new(cfg.text.clone(), 1, DType::F32)?.build(false)?;
    let rule = match text_init {
        TextInit::Torch => InitRule::TorchDefault,
        TextInit::Clip => InitRule::Clip { width: cfg.text.hidden_size, layers: cfg.text.num_hidden_layers },
    };
    let text = init_component(&[&clip.graph], "text_encoder", rule, seed)?;
    let vae = Vae::new(cfg.vae.clone(), DType::F32)?;
    let r = cfg.resolution();
    let lat = r / cfg.vae.downscale();
    let enc = vae.encode_graph(1, r, r, false)?;
    let dec = vae.decode_graph(1, lat, lat, false, false)?;
    let vae_w = init_component(&[&enc.graph, &dec.graph], "vae", InitRule::TorchDefault, seed)?;
    let shape = UNetShape { batch: 1, height: lat, width: lat, context_len: 77, dtype: DType::F32, features: false, taps: false };
    let ug = unet::build(&cfg.unet, &shape)?;
    let unet_w = init_component(&[&ug.graph], "unet", InitRule::TorchDefault, seed)?;
    Ok((text, vae_w, unet_w))
}

/// What `sd init` wrote.
#[derive(Clone, Debug)]
pub struct InitReport {
    pub out: PathBuf,
    /// (component, tensors, parameters).
    pub counts: Vec<(String, usize, usize)>,
}

impl std::fmt::Display for InitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "sd init: {}", self.out.display())?;
        for (c, t, p) in &self.counts {
            writeln!(f, "  {c:<13} {t:>4} tensors {p:>10} parameters ({:.2} MB in f32, {:.2} MB in f16)", *p as f64 * 4e-6, *p as f64 * 2e-6)?;
        }
        writeln!(f, "  tokenizer/    vocab.json + merges.txt (CLIP, {VOCAB_SIZE} tokens)")
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(path, e)
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
    crate::util::files::write_atomic(path, format!("{text}\n").as_bytes()).map_err(|e| io(path, e))
}

/// `tokenizer/vocab.json` + `merges.txt` (Hugging Face layout) from CLIP's gzipped BPE file.
pub fn write_tokenizer(vocab_gz: &Path, dir: &Path) -> Result<()> {
    let (vocab, merges) = read_bpe_gz(vocab_gz)?;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let map: serde_json::Map<String, Value> = vocab.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let path = dir.join("vocab.json");
    let text = serde_json::to_string(&map).map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
    crate::util::files::write_atomic(&path, text.as_bytes()).map_err(|e| io(&path, e))?;
    let mut m = String::from("#version: 0.2\n");
    for (a, b) in &merges {
        m.push_str(a);
        m.push(' ');
        m.push_str(b);
        m.push('\n');
    }
    let path = dir.join("merges.txt");
    crate::util::files::write_atomic(&path, m.as_bytes()).map_err(|e| io(&path, e))?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                "do_lower_case": true}),
    )
}

/// Writes the folder `out` (which must not exist or be empty): see the module doc.
pub fn init(config: &Path, out: &Path, seed: u64, vocab_gz: &Path, text_init: TextInit) -> Result<InitReport> {
    let cfg = SdConfig::from_file(config)?;
    if out.exists() && std::fs::read_dir(out).map_err(|e| io(out, e))?.next().is_some() {
        return Err(Error::io(out, std::io::Error::other("the output folder exists and is not empty")));
    }
    crate::util::files::regular_file_len(vocab_gz).map_err(|e| io(vocab_gz, e))?;
    let (text, vae, unet_w) = init_weights(&cfg, seed, text_init)?;
    for sub in ["text_encoder", "vae", "unet", "scheduler", "tokenizer"] {
        std::fs::create_dir_all(out.join(sub)).map_err(|e| io(&out.join(sub), e))?;
    }
    write_json(&out.join("text_encoder/config.json"), &cfg.component_json("text_encoder"))?;
    text.save_safetensors(&out.join("text_encoder/model.safetensors"))?;
    write_json(&out.join("vae/config.json"), &cfg.component_json("vae"))?;
    vae.save_safetensors(&out.join("vae/diffusion_pytorch_model.safetensors"))?;
    write_json(&out.join("unet/config.json"), &cfg.component_json("unet"))?;
    unet_w.save_safetensors(&out.join("unet/diffusion_pytorch_model.safetensors"))?;
    write_json(&out.join("scheduler/scheduler_config.json"), &cfg.component_json("scheduler"))?;
    write_tokenizer(vocab_gz, &out.join("tokenizer"))?;
    write_json(
        &out.join("model_index.json"),
        &json!({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": DIFFUSERS_VERSION,
            "feature_extractor": [null, null],
            "image_encoder": [null, null],
            "requires_safety_checker": false,
            "safety_checker": [null, null],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }),
    )?;
    // How the folder was made (the file is ours; the Hugging Face loaders ignore it).
    write_json(&out.join("instagen.json"), &json!({"made_by": "instagen sd init", "config": config.display().to_string(), "seed": seed, "text_init": text_init.name()}))?;
    let counts = [("text_encoder", &text), ("vae", &vae), ("unet", &unet_w)]
        .iter()
        .map(|(c, s)| (c.to_string(), s.len(), s.numel()))
        .collect();
    Ok(InitReport { out: out.to_path_buf(), counts })
}
