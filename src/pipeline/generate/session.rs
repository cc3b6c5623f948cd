//! The models of a generation run, loaded once: tokenizer + CLIP text encoder, the sampling UNet (`--sd`), the
//! feature UNet of the t=1 tap (`--features-sd`: the ORIGINAL SD when the sampler is fine-tuned; else the sampling
//! UNet's own last call), the VAE decoder and the grounding head. [`Session::generate`] turns a batch of planned
//! images into pixels, t=1 latents and boxes.
//!
//! Per batch: the prompts' CLIP contexts (one text-encoder call per distinct prompt, cached: a run has few distinct
//! prompts), each image's initial noise from its own seed, guided DDIM, the latent fed to the last (t = 1) step
//! kept, the feature levels of that step (or of the feature UNet on the same latent with the feature SD's
//! contexts), the head on the image's prompt categories (name embeddings of the feature SD's text encoder, the
//! text padded to the run's most categories per prompt), post-processing ([`PostProcess`]), VAE decode. A batch
//! shorter than the graphs' is padded with copies of its first image (their outputs are dropped).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::plan::PlannedImage;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::NodeId;
use crate::models::clip_text::ClipTextModel;
use crate::models::grounding::text::{pad_text, TextEmbedder};
use crate::models::grounding::{GroundingModel, GroundingShape};
use crate::models::scheduler::{DdimScheduler, GaussianNoise};
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::{self, UNetShape};
use crate::models::vae::Vae;
use crate::models::weights::{Component, SdCheckpoint};
use crate::pipeline::checks;
use crate::pipeline::ground::head::Head;
use crate::pipeline::ground::infer::PostProcess;
use crate::pipeline::ground::Level;
use crate::pipeline::sample::Sampler;
use crate::runtime::{DeviceParams, Executor};
use crate::tensor::{DType, HostTensor};

/// What a session is built from.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub sd: PathBuf,
    /// The SD whose UNet gives the t=1 features (`None`: `sd`).
    pub features_sd: Option<PathBuf>,
    pub head: PathBuf,
    pub dtype: DType,
    pub batch: usize,
    pub steps: usize,
    pub guidance: f32,
    pub post: PostProcess,
    /// Text tokens of the head graph: the most categories a prompt of the run can have.
    pub text_tokens: usize,
}

/// Seconds spent per part (summed over batches).
#[derive(Clone, Debug, Default)]
pub struct PartTimes {
    pub text: f64,
    pub unet: f64,
    pub features_head: f64,
    pub vae: f64,
    pub write: f64,
}

impl PartTimes {
    pub fn total(&self) -> f64 {
        self.text + self.unet + self.features_head + self.vae + self.write
    }
}

/// One generated image.
#[derive(Clone, Debug)]
pub struct Generated {
    pub index: u64,
    /// 8-bit RGB, `height * width * 3`.
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
    /// The latent fed to the t=1 step, `[h, w, 4]` NHWC values.
    pub latent: Vec<f32>,
    /// `[h, w]` of the latent.
    pub latent_hw: [usize; 2],
    /// `(category name, COCO [x, y, w, h] in pixels, score)`, best first.
    pub boxes: Vec<(String, [f32; 4], f32)>,
}

/// CLIP contexts of prompts (`last_hidden_state`, `[1, 77, D]` bytes), cached per prompt.
struct TextEncoder<B: Backend> {
    tokenizer: ClipTokenizer,
    clip: ClipTextModel,
    ex: Executor<B>,
    out: NodeId,
    cache: HashMap<String, Vec<u8>>,
    dtype: DType,
}

impl<B: Backend> TextEncoder<B> {
    fn open(mk: &impl Fn() -> Result<B>, ckpt: &SdCheckpoint, sd: &Path, dtype: DType) -> Result<Self> {
        let tokenizer = tokenizer_of(ckpt, sd)?;
        let vocab = ckpt.text_config.vocab_size;
        if tokenizer.vocab_size() > vocab {
            return Err(Error::Weights {
                path: tokenizer.source().to_path_buf(),
                msg: format!("{} tokens, but the text encoder of {} has vocab_size {vocab}", tokenizer.vocab_size(), sd.display()),
            });
        }
        let clip = ClipTextModel::new(ckpt.text_config.clone(), 1, dtype)?;
        let cg = clip.build(false)?;
        let cw = ckpt.component(Component::TextEncoder)?.load_for(&cg.graph)?;
        let ex = Executor::new(mk()?, cg.graph, &cw).map_err(|e| e.building(format!("text encoder graph of {}", sd.display())))?;
        Ok(TextEncoder { tokenizer, clip, ex, out: cg.last_hidden_state, cache: HashMap::new(), dtype })
    }

    fn context(&mut self, prompt: &str) -> Result<Vec<u8>> {
        if let Some(c) = self.cache.get(prompt) {
            return Ok(c.clone());
        }
        let e = self.tokenizer.encode(prompt)?;
        if e.truncated {
            return Err(too_long(prompt, e.dropped_tokens));
        }
        let feed = self.clip.inputs(&[e.ids])?;
        let feed: Vec<(&str, &HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
        self.ex.run(&feed)?;
        let c = self.ex.get(self.out)?;
        checks::check_finite(&c.to_f32(), || format!("text encoder output for {prompt:?}"))?;
        if self.cache.len() < 65536 {
            self.cache.insert(prompt.to_string(), c.data.clone());
        }
        Ok(c.data)
    }

    /// `[n, 77, D]` of `prompts`.
    fn contexts(&mut self, prompts: &[&str]) -> Result<HostTensor> {
        let mut data = Vec::new();
        for p in prompts {
            data.extend(self.context(p)?);
        }
        let d = self.clip.config.hidden_size;
        HostTensor::from_bytes(&[prompts.len(), self.clip.seq, d], self.dtype, data)
    }
}

fn too_long(prompt: &str, dropped: usize) -> Error {
    Error::Mismatch { what: format!("prompt {prompt:?}"), msg: format!("over CLIP's 77 tokens ({dropped} tokens would be dropped); use shorter category names or a smaller --per-prompt") }
}

fn tokenizer_of(ckpt: &SdCheckpoint, sd: &Path) -> Result<ClipTokenizer> {
    let dir = ckpt.tokenizer_dir().ok_or_else(|| Error::Weights {
        path: sd.join("tokenizer"),
        msg: "no tokenizer/ folder (vocab.json + merges.txt or tokenizer.json)".into(),
    })?;
    ClipTokenizer::from_folder(&dir)
}

/// The feature SD's UNet at the t=1 step (when it is not the sampler's).
struct FeatureUNet<B: Backend> {
    ex: Executor<B>,
    nodes: Vec<NodeId>,
    text: TextEncoder<B>,
}

/// The models of a run.
pub struct Session<B: Backend> {
    text: TextEncoder<B>,
    sampler: Sampler<B>,
    sched: DdimScheduler,
    features: Option<FeatureUNet<B>>,
    /// The level names of the feature graph, largest first.
    levels: Vec<Level>,
    names: TextEmbedder<B>,
    head: GroundingModel<B>,
    vae: Executor<B>,
    vae_image: NodeId,
    o: SessionOptions,
    latent: [usize; 2],
    image_side: usize,
    /// Time per part so far.
    pub times: PartTimes,
    /// Memory plans (`graph: summary`), for reports.
    pub plans: Vec<String>,
}

fn same_path(a: &Path, b: &Path) -> bool {
    crate::util::files::same_file(a, b)
}

/// The feature levels of a UNet graph: `(name, [h, w, C])`.
fn levels_of(g: &unet::UNetGraph) -> Vec<Level> {
    g.features
        .iter()
        .map(|(n, id)| {
            let s = g.graph.shape(*id);
            Level { name: n.clone(), shape: [s[1], s[2], s[3]] }
        })
        .collect()
}

impl<B: Backend> Session<B> {
    /// Loads every model (see the module documentation); checks the head's levels against the feature SD's.
    pub fn open(mk: &impl Fn() -> Result<B>, o: &SessionOptions) -> Result<Self> {
        let err = |msg: String| Error::Other(msg);
        if o.batch == 0 || o.steps == 0 || o.text_tokens == 0 {
            return Err(err(format!("--batch {} and --steps {} must be >= 1", o.batch, o.steps)));
        }
        checks::check_guidance(o.guidance)?;
        let dt = o.dtype;
        let ckpt = SdCheckpoint::open(&o.sd)?;
        let ucfg = ckpt.unet_config()?;
        let side = ucfg.sample_size;
        let source = format!("sample_size in {}", o.sd.join("unet/config.json").display());
        checks::check_latent_side(&ucfg, side, &source)?;
        let sizes = format!("--batch {} with {source} {side}", o.batch);
        let available = mk()?.memory_available()?;
        checks::check_unet_fits(&ucfg, 2 * o.batch, side, dt, available, &sizes)?;
        let vcfg = ckpt.vae_config.clone();
        let image_side = side * vcfg.downscale();
        checks::check_tensor_fits("the VAE decoder's last activation", &[o.batch, image_side, image_side, vcfg.block_out_channels[0]], dt, available, &sizes)?;
        if ucfg.cross_attention_dim != ckpt.text_config.hidden_size {
            return Err(Error::Weights {
                path: o.sd.join("unet/config.json"),
                msg: format!("cross_attention_dim {} != the text encoder's hidden_size {}", ucfg.cross_attention_dim, ckpt.text_config.hidden_size),
            });
        }
        let head = Head::open(&o.head)?;
        let mut plans = Vec::new();

        let text = TextEncoder::open(mk, &ckpt, &o.sd, dt)?;
        let fsd = o.features_sd.clone().filter(|f| !same_path(f, &o.sd));
        let seq = text.clip.seq;

        // The feature graph: the sampler's own, or the feature SD's UNet.
        let (features, levels, fckpt) = match &fsd {
            None => {
                let shape = UNetShape { batch: 2 * o.batch, height: side, width: side, context_len: seq, dtype: dt, features: true, taps: false };
                (None, levels_of(&unet::build(&ucfg, &shape)?), None)
            }
            Some(f) => {
                let fck = SdCheckpoint::open(f)?;
                let fcfg = fck.unet_config()?;
                if (fcfg.sample_size, fck.vae_config.downscale(), fcfg.in_channels) != (side, vcfg.downscale(), ucfg.in_channels) {
                    return Err(Error::Weights {
                        path: f.join("unet/config.json"),
                        msg: format!(
                            "--features-sd takes {}x{} latents of {} channels; the sampling SD {} makes {side}x{side} of {}",
                            fcfg.sample_size, fcfg.sample_size, fcfg.in_channels, o.sd.display(), ucfg.in_channels
                        ),
                    });
                }
                checks::check_unet_fits(&fcfg, 2 * o.batch, side, dt, available, &sizes)?;
                let ftext = TextEncoder::open(mk, &fck, f, dt)?;
                let shape = UNetShape { batch: 2 * o.batch, height: side, width: side, context_len: ftext.clip.seq, dtype: dt, features: true, taps: false };
                let ug = unet::build(&fcfg, &shape)?;
                let levels = levels_of(&ug);
                let uw = fck.component(Component::Unet)?.load_for(&ug.graph)?;
                let plan = crate::graph::Plan::new(&ug.graph);
                plans.push(format!("feature UNet: {}", plan.summary()));
                let ex = Executor::with_plan(mk()?, ug.graph.clone(), plan, &uw).map_err(|e| e.building(format!("feature UNet graph of {} ({sizes})", f.display())))?;
                let nodes = ug.features.iter().map(|(_, id)| *id).collect();
                (Some(FeatureUNet { ex, nodes, text: ftext }), levels, Some(fck))
            }
        };
        let feature_sd = fsd.as_deref().unwrap_or(&o.sd);
        head.check_levels(feature_sd, &levels)?;
        let fck = fckpt.as_ref().unwrap_or(&ckpt);
        if fck.text_config.hidden_size != head.config.text_dim {
            return Err(Error::Weights {
                path: head.dir.join(crate::pipeline::ground::head::CONFIG),
                msg: format!("text_dim {} but the text encoder of {} is {} wide", head.config.text_dim, feature_sd.display(), fck.text_config.hidden_size),
            });
        }

        // The sampling UNet (with the feature outputs when it is also the feature UNet).
        let shape = UNetShape { batch: 2 * o.batch, height: side, width: side, context_len: seq, dtype: dt, features: fsd.is_none(), taps: false };
        let ugraph = unet::build(&ucfg, &shape)?.graph;
        checks::check_graph_fits(&ugraph, available).map_err(|e| e.building(format!("UNet graph ({sizes})")))?;
        let uw = ckpt.component(Component::Unet)?.load_for(&ugraph)?;
        drop(ugraph);
        let sampler = Sampler::new(mk()?, &ucfg, &uw, o.batch, side, side, seq, dt, fsd.is_none()).map_err(|e| e.building(format!("UNet graph ({sizes})")))?;
        drop(uw);
        plans.push(format!("UNet: {}", sampler.plan));
        let mut sched = match ckpt.scheduler_config() {
            Some(p) => DdimScheduler::from_file(&p)?,
            None => DdimScheduler::sd_v1()?,
        };
        sched.set_timesteps(o.steps)?;

        // Name embeddings (f32, the feature SD's text encoder) and the head.
        let nclip = ClipTextModel::new(fck.text_config.clone(), 1, DType::F32)?;
        let nw = fck.component(Component::TextEncoder)?.load_for(&nclip.build(false)?.graph)?;
        let names = TextEmbedder::new(mk()?, fck.text_config.clone(), &nw, tokenizer_of(fck, feature_sd)?)?;
        drop(nw);
        let dev = DeviceParams::upload(mk()?, &head.params)?;
        let gshape = GroundingShape { batch: o.batch, levels: head.levels.iter().map(|l| [l.shape[0], l.shape[1]]).collect(), text_tokens: o.text_tokens, max_targets: 1 };
        let model = GroundingModel::new(&dev, &head.config, &gshape, false)?;

        // VAE decoder.
        let vae = Vae::new(vcfg, dt)?;
        let vg = vae.decode_graph(o.batch, side, side, true, false)?;
        checks::check_graph_fits(&vg.graph, available).map_err(|e| e.building(format!("VAE decoder graph ({sizes})")))?;
        let vw = ckpt.component(Component::Vae)?.load_for(&vg.graph)?;
        let plan = crate::graph::Plan::new(&vg.graph);
        plans.push(format!("VAE decoder: {}", plan.summary()));
        let vae_ex = Executor::with_plan(mk()?, vg.graph, plan, &vw).map_err(|e| e.building(format!("VAE decoder graph ({sizes})")))?;
        Ok(Session {
            text,
            sampler,
            sched,
            features,
            levels,
            names,
            head: model,
            vae: vae_ex,
            vae_image: vg.image,
            o: o.clone(),
            latent: [side, side],
            image_side,
            times: PartTimes::default(),
            plans,
        })
    }

    /// The side of the images (pixels).
    pub fn image_side(&self) -> usize {
        self.image_side
    }

    /// Checks that a prompt fits CLIP's 77 tokens (a clear error otherwise).
    pub fn check_prompt(&self, prompt: &str) -> Result<()> {
        let e = self.text.tokenizer.encode(prompt)?;
        if e.truncated {
            return Err(too_long(prompt, e.dropped_tokens));
        }
        if let Some(f) = &self.features {
            let e = f.text.tokenizer.encode(prompt)?;
            if e.truncated {
                return Err(too_long(prompt, e.dropped_tokens));
            }
        }
        Ok(())
    }

    /// Generates `batch` (at most the session's batch size; see the module documentation).
    pub fn generate(&mut self, batch: &[PlannedImage]) -> Result<Vec<Generated>> {
        let b = self.o.batch;
        if batch.is_empty() || batch.len() > b {
            return Err(Error::Other(format!("generate: a batch of {} images for graphs of {b}", batch.len())));
        }
        let padded: Vec<&PlannedImage> = (0..b).map(|i| batch.get(i).unwrap_or(&batch[0])).collect();
        let prompts: Vec<&str> = padded.iter().map(|p| p.prompt.as_str()).collect();
        let [h, w] = self.latent;

        let t = Instant::now();
        let uncond = self.text.contexts(&[""])?;
        let cond = self.text.contexts(&prompts)?;
        let fctx = match &mut self.features {
            Some(f) => Some((f.text.contexts(&[""])?, f.text.contexts(&prompts)?)),
            None => None,
        };
        self.times.text += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let mut init = Vec::with_capacity(b * h * w * 4);
        for p in &padded {
            init.extend(GaussianNoise::new(p.seed).sample(h * w * 4, 1.0));
        }
        let run = self.sampler.run(&self.sched, &uncond, &cond, &init, self.o.guidance, |_, _| {})?;
        self.times.unet += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let feats: Vec<HostTensor> = match (&mut self.features, fctx) {
            (Some(f), Some((fu, fc))) => {
                // The feature SD's UNet on the same t=1 latent, [uncond x B; cond].
                let ts = *self.sched.timesteps().last().expect("timesteps set");
                let x = run.last_input.to_f32();
                let doubled: Vec<f32> = x.iter().chain(x.iter()).copied().collect();
                let sample = HostTensor::from_f32(&[2 * b, h, w, 4], self.o.dtype, &doubled)?;
                let tt = HostTensor::from_f32(&[2 * b], DType::F32, &vec![ts as f32; 2 * b])?;
                let row = fu.data.len();
                let mut ctx = Vec::with_capacity(2 * b * row);
                for _ in 0..b {
                    ctx.extend_from_slice(&fu.data);
                }
                ctx.extend_from_slice(&fc.data);
                let mut shape = fc.shape.clone();
                shape[0] = 2 * b;
                let context = HostTensor::from_bytes(&shape, self.o.dtype, ctx)?;
                f.ex.run(&[("sample", &sample), ("timestep", &tt), ("context", &context)])?;
                f.nodes.iter().map(|&id| f.ex.get(id)).collect::<Result<_>>()?
            }
            _ => run.features.iter().map(|(_, t)| t.clone()).collect(),
        };
        let feats: Vec<HostTensor> = feats.into_iter().map(|t| if t.dtype == DType::F32 { t } else { t.cast(DType::F32) }).collect();
        for (f, lv) in feats.iter().zip(&self.levels) {
            checks::check_finite(&f.to_f32(), || format!("t=1 feature level {}", lv.name))?;
        }
        let per: Vec<HostTensor> = padded
            .iter()
            .map(|p| {
                let refs: Vec<&str> = p.categories.iter().map(|s| s.as_str()).collect();
                self.names.text_embeddings(&refs)
            })
            .collect::<Result<_>>()?;
        let text = pad_text(&per, self.o.text_tokens)?;
        let pred = self.head.predict(&feats, &text)?;
        let (q, tt) = (pred.logits.shape[1], pred.logits.shape[2]);
        let logits = pred.logits.to_f32();
        let boxes = pred.boxes.to_f32();
        let side = self.image_side as f32;
        let mut dets = Vec::with_capacity(batch.len());
        for (j, p) in batch.iter().enumerate() {
            let found = self.o.post.image(&logits, &boxes, (q, tt), j, p.categories.len(), (side, side))?;
            dets.push(found.into_iter().map(|(b, tok, s)| (p.categories[tok].clone(), [b[0], b[1], b[2] - b[0], b[3] - b[1]], s)).collect::<Vec<_>>());
        }
        self.times.features_head += t.elapsed().as_secs_f64();

        let t = Instant::now();
        let z = HostTensor::from_f32(&run.latents.shape, self.o.dtype, &run.latents.to_f32())?;
        self.vae.run(&[(Vae::LATENT, &z)])?;
        let img = self.vae.get(self.vae_image)?;
        let (ih, iw, c) = (img.shape[1], img.shape[2], img.shape[3]);
        if c != 3 {
            return Err(Error::Other(format!("the VAE decoder gives {c} channels; images need 3")));
        }
        let pixels = img.to_f32();
        checks::check_finite(&pixels, || "VAE decoder output (the images)".into())?;
        let rgb = crate::pipeline::txt2img::to_rgb8(&pixels);
        self.times.vae += t.elapsed().as_secs_f64();

        let lat = run.last_input.to_f32();
        let n_img = ih * iw * 3;
        let n_lat = h * w * 4;
        Ok(batch
            .iter()
            .zip(dets)
            .enumerate()
            .map(|(j, (p, boxes))| Generated {
                index: p.index,
                rgb: rgb[j * n_img..(j + 1) * n_img].to_vec(),
                width: iw,
                height: ih,
                latent: lat[j * n_lat..(j + 1) * n_lat].to_vec(),
                latent_hw: [h, w],
                boxes,
            })
            .collect())
    }
}
