//! `instagen sample`: text to images with SD v1.x (InstaGen stage 2, plus the stage-3 feature capture).
//!
//! prompt + "" -> [`ClipTokenizer`] -> CLIP text encoder graph -> guided DDIM loop ([`super::sample::sample`], the
//! UNet graph) -> VAE decoder graph (input `latents / 0.18215`) -> 8-bit RGB as diffusers' `numpy_to_pil`
//! (`round(clamp(x/2 + 0.5, 0, 1) * 255)`) -> `{seed}_{i}.png` written atomically (temp file + rename), plus
//! `{seed}.json` (prompt, seed, steps, guidance, ...) and with `features` the t=1 feature levels
//! `{seed}_features.safetensors`.
//!
//! Weights: a diffusers folder (`text_encoder/`, `unet/`, `vae/`, `tokenizer/`, optional `scheduler/`) or a
//! CompVis single `.safetensors` file, which needs an explicit tokenizer folder (`vocab.json` + `merges.txt` or
//! `tokenizer.json`) and uses the SD v1.x configs.
//!
//! Vocabulary: when the text encoder's `vocab_size` is smaller than the tokenizer's ids (only the small
//! random-weight test fixtures: vocab 1000), ids are taken modulo `vocab_size`, as the fixtures were made
//! (tests/sd_clip.rs); the report says so. With a real SD checkpoint (49408) nothing is mapped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result};
use crate::graph::{Executor, Plan};
use crate::models::clip_text::ClipTextModel;
use crate::models::scheduler::DdimScheduler;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::{self, UNetConfig, UNetShape};
use crate::models::vae::Vae;
use crate::models::weights::{Component, Layout, SdCheckpoint};
use crate::pipeline::sample::{SampleOptions, SampleOutput, sample, save_features};
use crate::tensor::{DType, HostTensor};

/// What `instagen sample` does.
#[derive(Clone, Debug)]
pub struct Txt2ImgOptions {
    /// A diffusers folder or a CompVis `.safetensors` file.
    pub weights: PathBuf,
    /// Tokenizer folder (needed for a CompVis file; overrides `weights/tokenizer`).
    pub tokenizer: Option<PathBuf>,
    pub prompt: String,
    pub steps: usize,
    pub guidance: f32,
    pub seed: u64,
    pub batch: usize,
    pub out: PathBuf,
    pub features: bool,
    pub dtype: DType,
    /// Latent side (image side / VAE factor); default: the UNet config's `sample_size`.
    pub latent: Option<usize>,
    /// Print the hand-written progress bar on stderr.
    pub progress: bool,
}

/// What a run wrote and how it went.
#[derive(Clone, Debug)]
pub struct Txt2ImgReport {
    pub images: Vec<PathBuf>,
    pub json: PathBuf,
    pub features: Option<PathBuf>,
    /// `(graph, plan summary)` for the text encoder, UNet and VAE decoder.
    pub plans: Vec<(String, String)>,
    pub truncated: Option<String>,
    /// Set when ids were mapped modulo a small vocabulary (test fixtures).
    pub vocab_note: Option<String>,
    pub image_size: (usize, usize),
    pub seconds: f64,
}

impl Txt2ImgReport {
    /// The lines `instagen sample` prints.
    pub fn text(&self) -> String {
        let mut s = String::new();
        if let Some(t) = &self.truncated {
            s += &format!("warning: {t}\n");
        }
        if let Some(v) = &self.vocab_note {
            s += &format!("note: {v}\n");
        }
        for (g, p) in &self.plans {
            s += &format!("memory {g}: {p}\n");
        }
        for p in &self.images {
            s += &format!("wrote {} ({}x{})\n", p.display(), self.image_size.0, self.image_size.1);
        }
        if let Some(f) = &self.features {
            s += &format!("wrote {}\n", f.display());
        }
        s += &format!("wrote {}\n{:.1} s\n", self.json.display(), self.seconds);
        s
    }
}

fn err(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

/// A simple progress bar on stderr: `step k/N [####....] elapsed 12.3s ETA 45.6s`.
pub struct Progress {
    start: Instant,
    label: String,
}

impl Progress {
    pub fn new(label: &str) -> Self {
        Progress { start: Instant::now(), label: label.to_string() }
    }
    /// The line for step `k` of `n` after `elapsed` seconds.
    pub fn line(label: &str, k: usize, n: usize, elapsed: f64) -> String {
        let width = 30;
        let done = if n == 0 { width } else { k * width / n };
        let eta = if k == 0 { 0.0 } else { elapsed / k as f64 * (n - k) as f64 };
        format!("{label} step {k}/{n} [{}{}] elapsed {elapsed:.1}s ETA {eta:.1}s", "#".repeat(done), ".".repeat(width - done))
    }
    pub fn update(&self, k: usize, n: usize) {
        use std::io::Write;
        let line = Self::line(&self.label, k, n, self.start.elapsed().as_secs_f64());
        let mut e = std::io::stderr();
        let _ = write!(e, "\r{line}");
        if k == n {
            let _ = writeln!(e);
        }
        let _ = e.flush();
    }
}

/// `[N, H, W, 3]` decoder output in [-1, 1] to 8-bit RGB, as diffusers (`(x/2+0.5).clamp(0,1)*255`, rounded).
pub fn to_rgb8(x: &[f32]) -> Vec<u8> {
    x.iter().map(|v| ((v / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0).round() as u8).collect()
}

/// Writes `bytes` to `path` through a temp file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn png_bytes(rgb: &[u8], w: usize, h: usize) -> Result<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| err(format!("PNG encode: {e}")))?;
    Ok(out)
}

/// Runs one graph once and reads one output.
fn run_graph<B: Backend>(
    backend: B,
    graph: &crate::graph::Graph,
    store: &crate::params::ParamStore,
    feed: &[(&str, &HostTensor)],
    out: crate::graph::NodeId,
) -> Result<(HostTensor, String)> {
    let plan = Plan::new(graph);
    let summary = plan.summary();
    let mut ex = Executor::with_plan(backend, graph.clone(), plan, store)?;
    ex.run(feed)?;
    Ok((ex.get(out)?, summary))
}

/// The whole text-to-image run on a backend kind.
pub fn run(kind: BackendKind, o: &Txt2ImgOptions) -> Result<Txt2ImgReport> {
    use crate::backend::{cpu::CpuBackend, cuda::CudaBackend, emu::EmuBackend};
    match kind {
        BackendKind::Cpu => run_with(|| Ok(CpuBackend), o),
        BackendKind::Emu => run_with(|| Ok(EmuBackend::new()), o),
        BackendKind::Cuda => run_with(|| CudaBackend::new(0), o),
    }
}

/// [`run`] with a backend constructor (called once per graph).
pub fn run_with<B: Backend>(mk: impl Fn() -> Result<B>, o: &Txt2ImgOptions) -> Result<Txt2ImgReport> {
    let start = Instant::now();
    if o.batch == 0 || o.steps == 0 {
        return Err(err("sample: --batch and --steps must be >= 1"));
    }
    if !o.weights.exists() {
        return Err(Error::Weights { path: o.weights.clone(), msg: "no such file or directory".into() });
    }
    let ckpt = SdCheckpoint::open(&o.weights)?;
    let dt = o.dtype;

    // Tokenizer.
    let tok_dir = match (&o.tokenizer, ckpt.tokenizer_dir()) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => t,
        (None, None) => {
            return Err(Error::Weights {
                path: o.weights.join("tokenizer"),
                msg: "no tokenizer/ folder (vocab.json + merges.txt or tokenizer.json); pass --tokenizer DIR".into(),
            })
        }
    };
    let tok = ClipTokenizer::from_folder(&tok_dir)?;
    let cond = tok.encode(&o.prompt)?;
    let uncond = tok.encode("")?;
    let truncated = cond.truncated.then(|| {
        format!("the prompt is over 77 tokens: {} tokens dropped (\"{}\") as in diffusers", cond.dropped_tokens, cond.dropped_text)
    });
    let vocab = ckpt.text_config.vocab_size;
    let mut vocab_note = None;
    let map = |ids: &[u32], note: &mut Option<String>| -> Vec<u32> {
        ids.iter()
            .map(|&i| {
                if i as usize >= vocab {
                    *note = Some(format!("text encoder vocab_size {vocab} < tokenizer ids: ids taken modulo {vocab} (test fixture)"));
                    i % vocab as u32
                } else {
                    i
                }
            })
            .collect()
    };
    let cond_ids = map(&cond.ids, &mut vocab_note);
    let uncond_ids = map(&uncond.ids, &mut vocab_note);
    let mut plans = Vec::new();

    // Text encoder: one graph for [uncond; cond].
    let clip = ClipTextModel::new(ckpt.text_config.clone(), 2, dt)?;
    let cg = clip.build(false)?;
    let cw = ckpt.component(Component::TextEncoder)?.load_for(&cg.graph)?;
    let feed = clip.inputs(&[uncond_ids, cond_ids])?;
    let feed_ref: Vec<(&str, &HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let (ctx, plan) = run_graph(mk()?, &cg.graph, &cw, &feed_ref, cg.last_hidden_state)?;
    plans.push(("text_encoder".to_string(), plan));
    drop(cw);
    let (t, d) = (ctx.shape[1], ctx.shape[2]);
    let row = t * d * dt.size();
    let uncond_ctx = HostTensor::from_bytes(&[1, t, d], dt, ctx.data[..row].to_vec())?;
    let mut cond_bytes = Vec::with_capacity(o.batch * row);
    for _ in 0..o.batch {
        cond_bytes.extend_from_slice(&ctx.data[row..2 * row]);
    }
    let cond_ctx = HostTensor::from_bytes(&[o.batch, t, d], dt, cond_bytes)?;

    // UNet + DDIM.
    let ucfg = match ckpt.unet_config() {
        Some(p) => UNetConfig::from_file(&p)?,
        None => UNetConfig::sd_v1(),
    };
    if ucfg.cross_attention_dim != d {
        return Err(err(format!(
            "{}: unet cross_attention_dim {} != text encoder hidden_size {d}",
            o.weights.display(),
            ucfg.cross_attention_dim
        )));
    }
    let sched = match ckpt.scheduler_config() {
        Some(p) => DdimScheduler::from_file(&p)?,
        None => DdimScheduler::sd_v1()?,
    };
    let side = o.latent.unwrap_or(ucfg.sample_size);
    let shape = UNetShape { batch: 2 * o.batch, height: side, width: side, context_len: t, dtype: dt, features: o.features, taps: false };
    let ugraph = unet::build(&ucfg, &shape)?.graph;
    let uw = ckpt.component(Component::Unet)?.load_for(&ugraph)?;
    drop(ugraph);
    let sopts = SampleOptions {
        steps: o.steps,
        guidance: o.guidance,
        seed: o.seed,
        height: side,
        width: side,
        dtype: dt,
        capture_features: o.features,
        init_latents: None,
    };
    let bar = Progress::new("unet");
    let out: SampleOutput = sample(mk()?, &ucfg, &uw, sched, &uncond_ctx, &cond_ctx, &sopts, |k, n| {
        if o.progress {
            bar.update(k, n)
        }
    })?;
    plans.push(("unet".to_string(), out.plan.clone()));
    drop(uw);

    // VAE decoder on `latents / 0.18215` (already divided by `sample`).
    let vae = Vae::new(ckpt.vae_config.clone(), dt)?;
    let vg = vae.decode_graph(o.batch, side, side, false, false)?;
    let vw = ckpt.component(Component::Vae)?.load_for(&vg.graph)?;
    let z = HostTensor::from_f32(&out.decoder_latents.shape, dt, &out.decoder_latents.to_f32())?;
    let (img, plan) = run_graph(mk()?, &vg.graph, &vw, &[(Vae::LATENT, &z)], vg.image)?;
    plans.push(("vae_decoder".to_string(), plan));
    let (h, w, c) = (img.shape[1], img.shape[2], img.shape[3]);
    if c != 3 {
        return Err(err(format!("VAE decoder gives {c} channels; PNG output needs 3")));
    }

    // Outputs.
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let rgb = to_rgb8(&img.to_f32());
    let mut images = Vec::new();
    for i in 0..o.batch {
        let path = o.out.join(format!("{}_{i}.png", o.seed));
        write_atomic(&path, &png_bytes(&rgb[i * h * w * 3..(i + 1) * h * w * 3], w, h)?)?;
        images.push(path);
    }
    let features = if o.features {
        let p = o.out.join(format!("{}_features.safetensors", o.seed));
        let tmp = o.out.join(format!(".{}_features.safetensors.tmp{}", o.seed, std::process::id()));
        save_features(&out, &tmp)?;
        std::fs::rename(&tmp, &p).map_err(|e| Error::io(&p, e))?;
        Some(p)
    } else {
        None
    };
    let json = o.out.join(format!("{}.json", o.seed));
    let meta = serde_json::json!({
        "prompt": o.prompt,
        "negative_prompt": "",
        "seed": o.seed,
        "steps": o.steps,
        "guidance": o.guidance,
        "batch": o.batch,
        "dtype": dt.to_string(),
        "width": w,
        "height": h,
        "weights": o.weights.display().to_string(),
        "layout": if ckpt.layout() == Layout::Diffusers { "diffusers" } else { "compvis" },
        "truncated": cond.truncated,
        "timesteps": out.timesteps,
        "images": images.iter().map(|p| p.file_name().unwrap().to_string_lossy().to_string()).collect::<Vec<_>>(),
        "features": features.as_ref().map(|p| p.file_name().unwrap().to_string_lossy().to_string()),
    });
    let text = serde_json::to_string_pretty(&meta).map_err(|e| err(format!("JSON: {e}")))?;
    write_atomic(&json, text.as_bytes())?;
    Ok(Txt2ImgReport {
        images,
        json,
        features,
        plans,
        truncated,
        vocab_note,
        image_size: (w, h),
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn time_graph<B: Backend>(
    backend: B,
    graph: &crate::graph::Graph,
    store: &crate::params::ParamStore,
    feed: &[(&str, &HostTensor)],
    out: crate::graph::NodeId,
    min_seconds: f64,
) -> Result<(f64, usize, String)> {
    let plan = Plan::new(graph);
    let summary = plan.summary();
    let mut ex = Executor::with_plan(backend, graph.clone(), plan, store)?;
    ex.run(feed)?; // warm-up
    ex.get(out)?;
    let start = Instant::now();
    let mut calls = 0;
    while calls < 2 || start.elapsed().as_secs_f64() < min_seconds {
        ex.run(feed)?;
        ex.get(out)?; // waits for the device
        calls += 1;
    }
    Ok((start.elapsed().as_secs_f64() / calls as f64, calls, summary))
}

fn time_on(
    kind: BackendKind,
    graph: &crate::graph::Graph,
    store: &crate::params::ParamStore,
    feed: &[(&str, &HostTensor)],
    out: crate::graph::NodeId,
    min_seconds: f64,
) -> Result<(f64, usize, String)> {
    use crate::backend::{cpu::CpuBackend, cuda::CudaBackend, emu::EmuBackend};
    match kind {
        BackendKind::Cpu => time_graph(CpuBackend, graph, store, feed, out, min_seconds),
        BackendKind::Emu => time_graph(EmuBackend::new(), graph, store, feed, out, min_seconds),
        BackendKind::Cuda => time_graph(CudaBackend::new(0)?, graph, store, feed, out, min_seconds),
    }
}

/// `config`: `sd-v1` or a diffusers model folder (`config.json` [+ weights]); returns the folder when given.
fn model_dir(config: &str) -> Option<PathBuf> {
    (config != "sd-v1").then(|| {
        let p = PathBuf::from(config);
        if p.is_dir() { p } else { p.parent().map(|q| q.to_path_buf()).unwrap_or_default() }
    })
}

/// Weights of `file_stem{,.fp16}.safetensors` in `dir` loaded for `graph`, else random ones.
fn bench_weights(dir: Option<&Path>, stem: &str, graph: &crate::graph::Graph) -> Result<(crate::params::ParamStore, String)> {
    if let Some(d) = dir {
        for f in [format!("{stem}.safetensors"), format!("{stem}.fp16.safetensors")] {
            let p = d.join(&f);
            if p.is_file() {
                let raw = crate::params::ParamStore::load_safetensors(&p)?;
                let mut s = crate::params::ParamStore::new();
                for (id, name) in graph.params() {
                    let n = graph.node(id);
                    let t = raw.get(name).ok_or_else(|| Error::Weights { path: p.clone(), msg: format!("missing key {name}") })?;
                    s.insert(name, if t.dtype == n.dtype { t.clone() } else { t.cast(n.dtype) });
                }
                return Ok((s, p.display().to_string()));
            }
        }
    }
    Ok((crate::nn::init_params(graph, 0)?, "random".into()))
}

/// `instagen bench clip`: one text encoder call on `batch` prompts of 77 tokens.
pub fn bench_clip(kind: BackendKind, config: &str, batch: usize, dtype: DType, min_seconds: f64) -> Result<String> {
    use crate::models::config::ClipTextConfig;
    let dir = model_dir(config);
    let cfg = match &dir {
        Some(d) => ClipTextConfig::from_file(&d.join("config.json"))?,
        None => ClipTextConfig::default(),
    };
    let model = ClipTextModel::new(cfg.clone(), batch, dtype)?;
    let g = model.build(false)?;
    let (store, source) = bench_weights(dir.as_deref(), "model", &g.graph)?;
    let ids: Vec<Vec<u32>> = (0..batch).map(|b| (0..model.seq).map(|i| ((i * 31 + b * 7) % cfg.vocab_size) as u32).collect()).collect();
    let feed = model.inputs(&ids)?;
    let feed: Vec<(&str, &HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let (secs, calls, plan) = time_on(kind, &g.graph, &store, &feed, g.last_hidden_state, min_seconds)?;
    Ok(format!(
        "clip {config}: batch {batch}, {} tokens, width {}, {} layers, {dtype}, backend {kind:?}, weights {source}\n\
         memory: {plan}\n{:.3} ms per call ({calls} calls)\n",
        model.seq,
        cfg.hidden_size,
        cfg.num_hidden_layers,
        secs * 1e3
    ))
}

/// `instagen bench vae`: one VAE decoder call on `batch` latents of `latent` (default sample_size / factor).
pub fn bench_vae(kind: BackendKind, config: &str, batch: usize, latent: Option<usize>, dtype: DType, min_seconds: f64) -> Result<String> {
    use crate::models::config::VaeConfig;
    let dir = model_dir(config);
    let cfg = match &dir {
        Some(d) => VaeConfig::from_file(&d.join("config.json"))?,
        None => VaeConfig::default(),
    };
    let factor = 1 << (cfg.block_out_channels.len() - 1);
    let side = latent.unwrap_or(cfg.sample_size / factor);
    let vae = Vae::new(cfg.clone(), dtype)?;
    let g = vae.decode_graph(batch, side, side, false, false)?;
    let (store, source) = bench_weights(dir.as_deref(), "diffusion_pytorch_model", &g.graph)?;
    let z = vae.noise(3, &[batch, side, side, cfg.latent_channels])?;
    let (secs, calls, plan) = time_on(kind, &g.graph, &store, &[(Vae::LATENT, &z)], g.image, min_seconds)?;
    Ok(format!(
        "vae decode {config}: batch {batch}, latent {side}x{side} -> image {}x{}, {dtype}, backend {kind:?}, weights {source}\n\
         memory: {plan}\n{:.3} ms per call ({calls} calls)\n",
        side * factor,
        side * factor,
        secs * 1e3
    ))
}
