//! Stage 3: the t=1 UNet features of the ORIGINAL (frozen) SD for a grounding image, and the feature cache.
//!
//! Per image, the UNet runs once on the batch `[uncond; cond]` (the empty prompt and the image's prompt, CLIP's
//! `last_hidden_state`) at the last timestep of SD's 50-step DDIM schedule (t = 1 with SD's `steps_offset` 1), and
//! the feature levels of `unet::feature_levels` (per resolution, `[uncond | cond]` channels of every block) are read
//! back: `[1, h, w, C]` per level, largest first.
//!
//! The latent x_1 fed to that call:
//! - a generated image with its saved t=1 latent (`latent` field): that latent, as InstaGen computes the features
//!   at the last denoising step of generation;
//! - any other image (no latent saved, e.g. a real photo): the VAE posterior MEAN (no sampling noise) scaled as SD
//!   does (`(mean - shift) * scaling_factor`) is taken as x_0 and noised to t=1 with DDPM's forward process,
//!   `x_1 = sqrt(ab_1) x_0 + sqrt(1 - ab_1) eps`, eps drawn from a generator seeded by (`seed`, image id), so the
//!   features of an image are the same in every run. (DDIM inversion to t=1 would differ from this by
//!   `sqrt(1 - ab_1)` ~ 0.03 of noise; one forward step is what the published method's t=1 latent is closest to.)
//!
//! The image must have the SD model's native size (the UNet's `sample_size` times the VAE's downscale: 512 for SD
//! v1.x); another size is an error naming the image file.
//!
//! Cache (`--features-cache DIR`): `DIR/{image_id}_{key}.safetensors`, one tensor per level named as the level
//! (`feat_64`, ...), `[1, h, w, C]`; `key` is a 64-bit FNV-1a hash of the image file, latent file and prompt (the
//! features depend on all three), so two datasets with the same image ids (base and novel) never share entries. A cached file is read instead of running SD; its level names and shapes are
//! checked against what the SD model gives (a mismatch is an error naming the file and the level). A missing file
//! is computed and written (atomically), so the first epoch fills the cache.

use std::path::{Path, PathBuf};

use super::dataset::GroundImage;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::NodeId;
use crate::models::clip_text::ClipTextModel;
use crate::models::scheduler::DdimScheduler;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::{self, UNetShape};
use crate::models::vae::Vae;
use crate::models::weights::{Component, SdCheckpoint};
use crate::params::ParamStore;
use crate::runtime::Executor;
use crate::tensor::{DType, HostTensor};
use crate::util::Rng;

/// DDIM steps of InstaGen's generation (stage 2): the features are those of its last timestep.
pub const GENERATION_STEPS: usize = 50;

/// One feature level: name and `[h, w, C]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Level {
    pub name: String,
    pub shape: [usize; 3],
}

/// The frozen SD models that turn an image + prompt into t=1 feature levels.
pub struct FeatureExtractor<B: Backend> {
    sd: PathBuf,
    tokenizer: ClipTokenizer,
    clip: ClipTextModel,
    clip_ex: Executor<B>,
    clip_out: NodeId,
    uncond: Vec<u8>,
    vae_ex: Executor<B>,
    vae_mean: NodeId,
    unet_ex: Executor<B>,
    feature_nodes: Vec<NodeId>,
    levels: Vec<Level>,
    image_side: usize,
    latent: [usize; 3],
    timestep: usize,
    factors: (f32, f32),
    scaling: f32,
    shift: f32,
    dtype: DType,
    seed: u64,
    /// Prompt -> CLIP context (one row), for prompts seen before.
    contexts: std::collections::HashMap<String, Vec<u8>>,
}

fn mismatch(what: impl Into<String>, msg: impl Into<String>) -> Error {
    Error::Mismatch { what: what.into(), msg: msg.into() }
}

impl<B: Backend> FeatureExtractor<B> {
    /// Opens the diffusers folder `sd` (text_encoder/, vae/, unet/, tokenizer/, optional scheduler/) and builds the
    /// three graphs in `dtype`; `seed` seeds the noise of images without a saved latent.
    pub fn new(mk: &impl Fn() -> Result<B>, sd: &Path, dtype: DType, seed: u64) -> Result<Self> {
        let ckpt = SdCheckpoint::open(sd)?;
        let tok_dir = ckpt.tokenizer_dir().ok_or_else(|| Error::Weights {
            path: sd.join("tokenizer"),
            msg: "no tokenizer/ folder (vocab.json + merges.txt or tokenizer.json)".into(),
        })?;
        let tokenizer = ClipTokenizer::from_folder(&tok_dir)?;
        let ucfg = ckpt.unet_config()?;
        let vcfg = ckpt.vae_config.clone();
        let width = ckpt.text_config.hidden_size;
        if ucfg.cross_attention_dim != width {
            return Err(Error::Weights {
                path: sd.join("unet/config.json"),
                msg: format!("cross_attention_dim {} != the text encoder's hidden_size {width}", ucfg.cross_attention_dim),
            });
        }
        let mut sched = match ckpt.scheduler_config() {
            Some(p) => DdimScheduler::from_file(&p)?,
            None => DdimScheduler::sd_v1()?,
        };
        sched.set_timesteps(GENERATION_STEPS)?;
        let timestep = *sched.timesteps().last().ok_or_else(|| mismatch("scheduler", "no timesteps"))?;
        let ab = sched.alphas_cumprod()[timestep];
        let factors = (ab.sqrt(), (1.0f32 - ab).sqrt());

        let clip = ClipTextModel::new(ckpt.text_config.clone(), 1, dtype)?;
        let cg = clip.build(false)?;
        let cw = ckpt.component(Component::TextEncoder)?.load_for(&cg.graph)?;
        let clip_ex = Executor::new(mk()?, cg.graph, &cw).map_err(|e| e.building("text encoder graph"))?;
        drop(cw);

        let side = ucfg.sample_size;
        let image_side = side * vcfg.downscale();
        let vae = Vae::new(vcfg.clone(), dtype)?;
        let vg = vae.encode_graph(1, image_side, image_side, false)?;
        let vw = ckpt.component(Component::Vae)?.load_for(&vg.graph)?;
        let vae_ex = Executor::new(mk()?, vg.graph, &vw).map_err(|e| e.building("VAE encoder graph"))?;
        drop(vw);

        let shape = UNetShape { batch: 2, height: side, width: side, context_len: clip.seq, dtype, features: true, taps: false };
        let ug = unet::build(&ucfg, &shape)?;
        let levels = ug
            .features
            .iter()
            .map(|(n, id)| {
                let s = ug.graph.shape(*id);
                Level { name: n.clone(), shape: [s[1], s[2], s[3]] }
            })
            .collect();
        let feature_nodes = ug.features.iter().map(|(_, id)| *id).collect();
        let uw = ckpt.component(Component::Unet)?.load_for(&ug.graph)?;
        let unet_ex = Executor::new(mk()?, ug.graph, &uw).map_err(|e| e.building("UNet feature graph"))?;
        drop(uw);

        let mut fx = FeatureExtractor {
            sd: sd.to_path_buf(),
            tokenizer,
            clip,
            clip_ex,
            clip_out: cg.last_hidden_state,
            uncond: Vec::new(),
            vae_ex,
            vae_mean: vg.mean,
            unet_ex,
            feature_nodes,
            levels,
            image_side,
            latent: [side, side, vcfg.latent_channels],
            timestep,
            factors,
            scaling: vcfg.scaling_factor,
            shift: vcfg.shift_factor.unwrap_or(0.0),
            dtype,
            seed,
            contexts: Default::default(),
        };
        fx.uncond = fx.context("")?;
        Ok(fx)
    }

    /// The feature levels this SD model gives (largest first).
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }
    /// The image side the model takes (its native resolution).
    pub fn image_side(&self) -> usize {
        self.image_side
    }
    /// The timestep the features are taken at.
    pub fn timestep(&self) -> usize {
        self.timestep
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn sd(&self) -> &Path {
        &self.sd
    }

    /// CLIP `last_hidden_state` of one prompt (bytes of `[1, 77, D]`).
    fn context(&mut self, prompt: &str) -> Result<Vec<u8>> {
        if let Some(c) = self.contexts.get(prompt) {
            return Ok(c.clone());
        }
        let e = self.tokenizer.encode(prompt)?;
        if e.truncated {
            return Err(mismatch(format!("prompt {prompt:?}"), format!("over 77 tokens ({} dropped)", e.dropped_tokens)));
        }
        let feed = self.clip.inputs(&[e.ids])?;
        let feed: Vec<(&str, &HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
        self.clip_ex.run(&feed)?;
        let c = self.clip_ex.get(self.clip_out)?.data;
        if self.contexts.len() < 4096 {
            self.contexts.insert(prompt.to_string(), c.clone());
        }
        Ok(c)
    }

    /// The t=1 latent of an image (NHWC values, `[h, w, 4]`): its saved latent, or encoded and noised.
    pub fn latent(&mut self, img: &GroundImage) -> Result<Vec<f32>> {
        let [h, w, c] = self.latent;
        if let Some(p) = &img.latent {
            let s = ParamStore::load_safetensors(p)?;
            let t = s.get("latent").ok_or_else(|| Error::Weights { path: p.clone(), msg: "no tensor 'latent' (the t=1 latent, [h, w, 4] NHWC)".into() })?;
            if t.shape != [h, w, c] && t.shape != [1, h, w, c] {
                return Err(Error::Weights { path: p.clone(), msg: format!("tensor 'latent' is {:?}; the SD model wants [1, {h}, {w}, {c}]", t.shape) });
            }
            return Ok(t.to_f32());
        }
        let r = self.image_side;
        if (img.width as usize, img.height as usize) != (r, r) {
            return Err(mismatch(
                img.path.display().to_string(),
                format!("image is {}x{}; the SD model ({}) takes {r}x{r} images", img.width, img.height, self.sd.display()),
            ));
        }
        let rgb = crate::detection::coco::read_image(&img.path)?;
        if (rgb.width() as usize, rgb.height() as usize) != (r, r) {
            return Err(mismatch(img.path.display().to_string(), format!("image file is {}x{}, want {r}x{r}", rgb.width(), rgb.height())));
        }
        let px: Vec<f32> = crate::data::image::rgb8_to_f32(&rgb).iter().map(|v| v / 127.5 - 1.0).collect();
        let x = HostTensor::from_f32(&[1, r, r, 3], self.dtype, &px)?;
        let noise = HostTensor::zeros(&[1, h, w, c], self.dtype);
        self.vae_ex.run(&[(Vae::IMAGE, &x), (Vae::NOISE, &noise)])?;
        let mean = self.vae_ex.get(self.vae_mean)?.to_f32();
        let eps = Rng::new(self.seed ^ img.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)).normal_vec(mean.len(), 1.0);
        let (a, b) = self.factors;
        Ok(mean.iter().zip(&eps).map(|(m, e)| a * ((m - self.shift) * self.scaling) + b * e).collect())
    }

    /// The feature levels of one image, `[1, h, w, C]` each in the extractor's dtype.
    pub fn features(&mut self, img: &GroundImage) -> Result<Vec<HostTensor>> {
        let [h, w, c] = self.latent;
        let lat = self.latent(img)?;
        let doubled: Vec<f32> = lat.iter().chain(lat.iter()).copied().collect();
        let sample = HostTensor::from_f32(&[2, h, w, c], self.dtype, &doubled)?;
        let tt = HostTensor::from_f32(&[2], DType::F32, &[self.timestep as f32; 2])?;
        let cond = self.context(&img.prompt)?;
        let mut ctx = self.uncond.clone();
        ctx.extend_from_slice(&cond);
        let d = self.clip.config.hidden_size;
        let context = HostTensor::from_bytes(&[2, self.clip.seq, d], self.dtype, ctx)?;
        self.unet_ex.run(&[("sample", &sample), ("timestep", &tt), ("context", &context)])?;
        let mut out = Vec::with_capacity(self.feature_nodes.len());
        for (&id, lv) in self.feature_nodes.iter().zip(&self.levels) {
            let t = self.unet_ex.get(id)?;
            crate::pipeline::checks::check_finite(&t.to_f32(), || format!("t=1 feature level {} of image {}", lv.name, img.path.display()))?;
            out.push(t);
        }
        Ok(out)
    }
}

/// The on-disk feature cache (see the module documentation).
#[derive(Clone, Debug)]
pub struct FeatureCache {
    pub dir: PathBuf,
}

impl FeatureCache {
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(FeatureCache { dir: dir.to_path_buf() })
    }

    /// The cache file of an image (see the module documentation).
    pub fn path(&self, img: &GroundImage) -> PathBuf {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let latent = img.latent.as_ref().map(|p| crate::util::files::canonical(p).display().to_string()).unwrap_or_default();
        let key = format!("{}\n{latent}\n{}", crate::util::files::canonical(&img.path).display(), img.prompt);
        for b in key.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.dir.join(format!("{}_{h:016x}.safetensors", img.id))
    }

    /// The cached levels of an image (`None` when not cached), checked against `levels`.
    pub fn load(&self, img: &GroundImage, levels: &[Level]) -> Result<Option<Vec<HostTensor>>> {
        let p = self.path(img);
        if !p.exists() {
            return Ok(None);
        }
        let s = ParamStore::load_safetensors(&p)?;
        check_levels(&p, &s, levels).map(Some)
    }

    pub fn store(&self, img: &GroundImage, levels: &[Level], feats: &[HostTensor]) -> Result<()> {
        let mut s = ParamStore::new();
        for (lv, t) in levels.iter().zip(feats) {
            s.insert(&lv.name, t.clone());
        }
        s.save_safetensors(&self.path(img))
    }
}

/// The tensors of `levels` from a feature file, each `[1, h, w, C]` (or `[h, w, C]`); a missing level or another
/// shape is an error naming the file and the level.
pub fn check_levels(path: &Path, s: &ParamStore, levels: &[Level]) -> Result<Vec<HostTensor>> {
    let mut out = Vec::with_capacity(levels.len());
    for lv in levels {
        let [h, w, c] = lv.shape;
        let t = s.get(&lv.name).ok_or_else(|| Error::Weights {
            path: path.to_path_buf(),
            msg: format!("feature level {} is missing (the file has {:?})", lv.name, s.iter().map(|(n, _)| n).collect::<Vec<_>>()),
        })?;
        if t.shape != [1, h, w, c] && t.shape != [h, w, c] {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                msg: format!("feature level {} has shape {:?}; the head's config wants [1, {h}, {w}, {c}]", lv.name, t.shape),
            });
        }
        if !t.dtype.is_float() {
            return Err(Error::Weights { path: path.to_path_buf(), msg: format!("feature level {} is {}, not a float tensor", lv.name, t.dtype) });
        }
        let mut t = t.clone();
        t.shape = vec![1, h, w, c];
        out.push(t);
    }
    Ok(out)
}

/// Feature source for training / inference: the extractor, with the cache in front when given.
pub struct Features<B: Backend> {
    pub extractor: FeatureExtractor<B>,
    pub cache: Option<FeatureCache>,
    /// Cache hits and computed images (for reports).
    pub hits: usize,
    pub computed: usize,
}

impl<B: Backend> Features<B> {
    pub fn new(extractor: FeatureExtractor<B>, cache: Option<FeatureCache>) -> Self {
        Features { extractor, cache, hits: 0, computed: 0 }
    }

    /// The levels of one image.
    pub fn get(&mut self, img: &GroundImage) -> Result<Vec<HostTensor>> {
        let levels = self.extractor.levels().to_vec();
        if let Some(c) = &self.cache {
            if let Some(f) = c.load(img, &levels)? {
                self.hits += 1;
                return Ok(f);
            }
        }
        let f = self.extractor.features(img)?;
        self.computed += 1;
        if let Some(c) = &self.cache {
            c.store(img, &levels, &f)?;
        }
        Ok(f)
    }

    /// The levels of several images stacked to `[B, h, w, C]` per level, in `dtype`.
    pub fn batch(&mut self, imgs: &[&GroundImage], dtype: DType) -> Result<Vec<HostTensor>> {
        let per: Vec<Vec<HostTensor>> = imgs.iter().map(|i| self.get(i)).collect::<Result<_>>()?;
        let n = self.extractor.levels().len();
        (0..n)
            .map(|l| {
                let parts: Vec<HostTensor> = per.iter().map(|f| if f[l].dtype == dtype { f[l].clone() } else { f[l].cast(dtype) }).collect();
                let mut t = crate::data::stack(&parts)?;
                // stack gives [B, 1, h, w, C]: drop the 1.
                t.shape.remove(1);
                Ok(t)
            })
            .collect()
    }
}
