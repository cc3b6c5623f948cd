//! `instagen sample`: text to images with SD v1.x (InstaGen stage 2, plus the stage-3 feature capture).
//!
//! prompt + "" -> [`ClipTokenizer`] -> CLIP text encoder graph -> guided DDIM loop ([`super::sample::sample`], the
//! UNet graph) -> VAE decoder graph (input `latents / scaling_factor (+ shift_factor)` of `vae/config.json`) ->
//! 8-bit RGB as diffusers' `numpy_to_pil` (`round(clamp(x/2 + 0.5, 0, 1) * 255)`) -> `{seed}_{i}.png` written
//! atomically (temp file + rename), with `features` the t=1 feature levels `{seed}_features.safetensors`, and last
//! `{seed}.json` (prompt, seed, steps, guidance, ...). When any output fails, the files of the run are removed.
//!
//! Checked before anything large is built: `--batch`/`--steps` >= 1, `--guidance` (see [`checks`]), the latent
//! side (a positive multiple of the UNet's downsampling), the UNet's and VAE's largest activations against the
//! memory the backend has (each graph's whole plan is then checked by the executor), the tokenizer's vocabulary
//! against the text encoder's `vocab_size`. After each graph, non-finite values are an error naming the graph
//! or the DDIM step.
//!
//! Weights: a diffusers folder (`text_encoder/`, `unet/`, `vae/`, `tokenizer/`, optional `scheduler/`) or a
//! CompVis single `.safetensors` file, which needs an explicit tokenizer folder (`vocab.json` + `merges.txt` or
//! `tokenizer.json`) and uses the SD v1.x configs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backend::{Backend, BackendKind};
use crate::error::{Error, Result};
use crate::graph::Plan;
use crate::pipeline::timing::{measure, BenchReport, Timing};
use crate::runtime::Executor;
use crate::models::clip_text::ClipTextModel;
use crate::models::scheduler::DdimScheduler;
use crate::models::tokenizer::ClipTokenizer;
use crate::models::unet::{self, UNetShape};
use crate::models::vae::Vae;
use crate::models::weights::{Component, Layout, SdCheckpoint};
use crate::pipeline::checks;
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
    crate::util::files::write_atomic(path, bytes).map_err(|e| Error::io(path, e))
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
    crate::with_backend!(kind, |mk| run_with(mk, o))
}

/// [`run`] with a backend constructor (called once per graph).
pub fn run_with<B: Backend>(mk: impl Fn() -> Result<B>, o: &Txt2ImgOptions) -> Result<Txt2ImgReport> {
    let start = Instant::now();
    if o.batch == 0 || o.steps == 0 {
        return Err(err(format!("sample: --batch {} and --steps {} must be >= 1", o.batch, o.steps)));
    }
    checks::check_guidance(o.guidance)?;
    if !o.weights.exists() {
        return Err(Error::Weights { path: o.weights.clone(), msg: "no such file or directory".into() });
    }
    let ckpt = SdCheckpoint::open(&o.weights)?;
    let dt = o.dtype;

    // Configs and sizes first: nothing large is built before they are known to fit.
    let ucfg = ckpt.unet_config()?;
    let unet_config = o.weights.join("unet/config.json");
    let (side, side_source) = match o.latent {
        Some(s) => (s, "--latent".to_string()),
        None => (ucfg.sample_size, format!("sample_size in {}", unet_config.display())),
    };
    checks::check_latent_side(&ucfg, side, &side_source)?;
    let sizes = format!("--batch {} with {side_source} {side}", o.batch);
    let rows = o.batch.checked_mul(2).ok_or_else(|| err(format!("--batch {}: too large", o.batch)))?;
    let available = mk()?.memory_available()?;
    checks::check_unet_fits(&ucfg, rows, side, dt, available, &sizes)?;
    let vcfg = &ckpt.vae_config;
    let image_side = side.checked_mul(vcfg.downscale()).ok_or_else(|| err(format!("{sizes}: the image side overflows")))?;
    let last = [o.batch, image_side, image_side, vcfg.block_out_channels[0]];
    checks::check_tensor_fits("the VAE decoder's last activation", &last, dt, available, &sizes)?;
    // The sizes are bounded now: build the UNet and VAE graphs and check their whole memory plans too.
    let text_len = crate::models::tokenizer::MAX_LEN;
    let shape = UNetShape { batch: rows, height: side, width: side, context_len: text_len, dtype: dt, features: o.features, taps: false };
    let ugraph = unet::build(&ucfg, &shape)?.graph;
    checks::check_graph_fits(&ugraph, available).map_err(|e| e.building(format!("UNet graph ({sizes})")))?;
    let vae = Vae::new(ckpt.vae_config.clone(), dt)?;
    let vg = vae.decode_graph(o.batch, side, side, true, false)?;
    checks::check_graph_fits(&vg.graph, available).map_err(|e| e.building(format!("VAE decoder graph ({sizes})")))?;
    let sched = match ckpt.scheduler_config() {
        Some(p) => DdimScheduler::from_file(&p)?,
        None => DdimScheduler::sd_v1()?,
    };
    // The output folder must be usable before minutes of compute.
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    if !o.out.is_dir() {
        return Err(Error::io(&o.out, std::io::Error::other("--out is not a directory")));
    }

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
    let vocab = ckpt.text_config.vocab_size;
    if tok.vocab_size() > vocab {
        let te = match ckpt.layout() {
            Layout::Diffusers => o.weights.join("text_encoder/config.json").display().to_string(),
            Layout::CompVis => format!("the SD v1.x text encoder of {}", o.weights.display()),
        };
        return Err(err(format!(
            "{}: {} tokens, but the text encoder ({te}) has vocab_size {vocab}: ids at or above {vocab} have no embedding",
            tok.source().display(),
            tok.vocab_size()
        )));
    }
    let cond = tok.encode(&o.prompt)?;
    let uncond = tok.encode("")?;
    let truncated = cond.truncated.then(|| {
        format!("the prompt is over 77 tokens: {} tokens dropped (\"{}\") as in diffusers", cond.dropped_tokens, cond.dropped_text)
    });
    let mut plans = Vec::new();

    // Text encoder: one graph for [uncond; cond].
    let clip = ClipTextModel::new(ckpt.text_config.clone(), 2, dt)?;
    let cg = clip.build(false)?;
    let cw = ckpt.component(Component::TextEncoder)?.load_for(&cg.graph)?;
    let feed = clip.inputs(&[uncond.ids.clone(), cond.ids.clone()])?;
    let feed_ref: Vec<(&str, &HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let (ctx, plan) = run_graph(mk()?, &cg.graph, &cw, &feed_ref, cg.last_hidden_state).map_err(|e| e.building("text encoder graph"))?;
    checks::check_finite(&ctx.to_f32(), || "text encoder output".into())?;
    plans.push(("text_encoder".to_string(), plan));
    drop(cw);
    let (t, d) = (ctx.shape[1], ctx.shape[2]);
    if t != text_len {
        return Err(err(format!("the text encoder gives {t} tokens per prompt, the pipeline feeds {text_len}")));
    }
    let row = t * d * dt.size();
    let uncond_ctx = HostTensor::from_bytes(&[1, t, d], dt, ctx.data[..row].to_vec())?;
    let cond_ctx = HostTensor::from_bytes(&[o.batch, t, d], dt, ctx.data[row..2 * row].repeat(o.batch))?;

    // UNet + DDIM.
    if ucfg.cross_attention_dim != d {
        return Err(err(format!(
            "{}: unet cross_attention_dim {} != text encoder hidden_size {d}",
            o.weights.display(),
            ucfg.cross_attention_dim
        )));
    }
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
    })
    .map_err(|e| e.building(format!("UNet graph ({sizes})")))?;
    plans.push(("unet".to_string(), out.plan.clone()));
    drop(uw);

    // VAE decoder on the latents, unscaled in the graph by the VAE's scaling_factor (and shift_factor).
    let vw = ckpt.component(Component::Vae)?.load_for(&vg.graph)?;
    let z = HostTensor::from_f32(&out.latents.shape, dt, &out.latents.to_f32())?;
    let (img, plan) = run_graph(mk()?, &vg.graph, &vw, &[(Vae::LATENT, &z)], vg.image).map_err(|e| e.building(format!("VAE decoder graph ({sizes})")))?;
    plans.push(("vae_decoder".to_string(), plan));
    let (h, w, c) = (img.shape[1], img.shape[2], img.shape[3]);
    if c != 3 {
        return Err(err(format!("VAE decoder gives {c} channels; PNG output needs 3")));
    }
    let pixels = img.to_f32();
    checks::check_finite(&pixels, || "VAE decoder output (the images)".into())?;

    // Outputs: images, features, then the run JSON last (its presence marks a complete run). On any failure
    // every file this run wrote is removed.
    let mut written: Vec<PathBuf> = Vec::new();
    let result = write_outputs(o, &ckpt, &out, &to_rgb8(&pixels), (w, h), cond.truncated, &mut written);
    let (images, features, json) = match result {
        Ok(r) => r,
        Err(e) => {
            for p in &written {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
    };
    Ok(Txt2ImgReport { images, json, features, plans, truncated, image_size: (w, h), seconds: start.elapsed().as_secs_f64() })
}

type Written = (Vec<PathBuf>, Option<PathBuf>, PathBuf);

/// Writes the PNGs, the features and the run JSON of a run, recording each file in `written` as it lands.
fn write_outputs(
    o: &Txt2ImgOptions,
    ckpt: &SdCheckpoint,
    out: &SampleOutput,
    rgb: &[u8],
    (w, h): (usize, usize),
    truncated: bool,
    written: &mut Vec<PathBuf>,
) -> Result<Written> {
    let mut images = Vec::new();
    for i in 0..o.batch {
        let path = o.out.join(format!("{}_{i}.png", o.seed));
        write_atomic(&path, &png_bytes(&rgb[i * h * w * 3..(i + 1) * h * w * 3], w, h)?)?;
        written.push(path.clone());
        images.push(path);
    }
    let features = if o.features {
        let p = o.out.join(format!("{}_features.safetensors", o.seed));
        save_features(out, &p)?;
        written.push(p.clone());
        Some(p)
    } else {
        None
    };
    let json = o.out.join(format!("{}.json", o.seed));
    let name = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let meta = serde_json::json!({
        "prompt": o.prompt,
        "negative_prompt": "",
        "seed": o.seed,
        "steps": o.steps,
        "guidance": o.guidance,
        "batch": o.batch,
        "dtype": o.dtype.to_string(),
        "width": w,
        "height": h,
        "weights": o.weights.display().to_string(),
        "layout": if ckpt.layout() == Layout::Diffusers { "diffusers" } else { "compvis" },
        "vae_scaling_factor": ckpt.vae_config.scaling_factor,
        "truncated": truncated,
        "timesteps": out.timesteps,
        "images": images.iter().map(name).collect::<Vec<_>>(),
        "features": features.as_ref().map(name),
    });
    let text = serde_json::to_string_pretty(&meta).map_err(|e| err(format!("JSON: {e}")))?;
    write_atomic(&json, text.as_bytes())?;
    written.push(json.clone());
    Ok((images, features, json))
}

fn time_graph<B: Backend>(
    backend: B,
    graph: &crate::graph::Graph,
    store: &crate::params::ParamStore,
    feed: &[(&str, &HostTensor)],
    out: crate::graph::NodeId,
    min_seconds: f64,
) -> Result<(Timing, String)> {
    let plan = Plan::new(graph);
    let summary = plan.summary();
    let mut ex = Executor::with_plan(backend, graph.clone(), plan, store)?;
    let t = measure(2, min_seconds, || {
        ex.run(feed)?;
        ex.get(out).map(|_| ()) // waits for the device
    })?;
    Ok((t, summary))
}

fn time_on(
    kind: BackendKind,
    graph: &crate::graph::Graph,
    store: &crate::params::ParamStore,
    feed: &[(&str, &HostTensor)],
    out: crate::graph::NodeId,
    min_seconds: f64,
) -> Result<(Timing, String)> {
    crate::with_backend!(kind, |mk| time_graph(mk()?, graph, store, feed, out, min_seconds))
}

/// `--config`: `sd-v1` (`None`), or a diffusers model folder or its `config.json`: `(folder, config file)`.
fn model_dir(config: &str) -> Result<Option<(PathBuf, PathBuf)>> {
    if config == "sd-v1" {
        return Ok(None);
    }
    let p = PathBuf::from(config);
    if p.is_dir() {
        return Ok(Some((p.clone(), p.join("config.json"))));
    }
    if !p.exists() {
        return Err(Error::io(&p, std::io::Error::other("--config: no such model folder or config.json (or use sd-v1)")));
    }
    Ok(Some((p.parent().map(|q| q.to_path_buf()).unwrap_or_default(), p)))
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
pub fn bench_clip(kind: BackendKind, config: &str, batch: usize, dtype: DType, min_seconds: f64) -> Result<BenchReport> {
    use crate::models::config::ClipTextConfig;
    crate::pipeline::sample::check_bench_args(batch, min_seconds)?;
    let dir = model_dir(config)?;
    let cfg = match &dir {
        Some((_, f)) => ClipTextConfig::from_file(f)?,
        None => ClipTextConfig::default(),
    };
    let dir = dir.map(|(d, _)| d);
    let available = crate::with_backend!(kind, |mk| mk()?.memory_available()?);
    let mlp = [batch, crate::models::tokenizer::MAX_LEN, cfg.intermediate_size];
    checks::check_tensor_fits("the text encoder's MLP activation", &mlp, dtype, available, &format!("--batch {batch}"))?;
    let model = ClipTextModel::new(cfg.clone(), batch, dtype)?;
    let g = model.build(false)?;
    let (store, source) = bench_weights(dir.as_deref(), "model", &g.graph)?;
    let ids: Vec<Vec<u32>> = (0..batch).map(|b| (0..model.seq).map(|i| ((i * 31 + b * 7) % cfg.vocab_size) as u32).collect()).collect();
    let feed = model.inputs(&ids)?;
    let feed: Vec<(&str, &HostTensor)> = feed.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let (timing, plan) = time_on(kind, &g.graph, &store, &feed, g.last_hidden_state, min_seconds)
        .map_err(|e| e.building(format!("text encoder graph (--batch {batch})")))?;
    let text = format!(
        "clip {config}: batch {batch}, {} tokens, width {}, {} layers, {dtype}, backend {kind:?}, weights {source}\n\
         memory: {plan}\n{:.3} ms per call (median of {} calls after 1 warm-up)\n",
        model.seq,
        cfg.hidden_size,
        cfg.num_hidden_layers,
        timing.seconds * 1e3,
        timing.runs
    );
    Ok(BenchReport { text, timing })
}

/// `instagen bench vae`: one VAE decoder call on `batch` latents of `latent` (default sample_size / factor).
pub fn bench_vae(kind: BackendKind, config: &str, batch: usize, latent: Option<usize>, dtype: DType, min_seconds: f64) -> Result<BenchReport> {
    use crate::models::config::VaeConfig;
    crate::pipeline::sample::check_bench_args(batch, min_seconds)?;
    let dir = model_dir(config)?;
    let cfg = match &dir {
        Some((_, f)) => VaeConfig::from_file(f)?,
        None => VaeConfig::default(),
    };
    let dir = dir.map(|(d, _)| d);
    let factor = cfg.downscale();
    let (side, source) = match latent {
        Some(s) => (s, "--latent"),
        None => (cfg.sample_size / factor, "the VAE config's sample_size / downscale"),
    };
    if side == 0 {
        return Err(err(format!("{source} {side}: the latent side must be >= 1")));
    }
    let culprit = format!("--batch {batch} with {source} {side}");
    let image = side.checked_mul(factor).ok_or_else(|| err(format!("{culprit}: the image side overflows")))?;
    let available = crate::with_backend!(kind, |mk| mk()?.memory_available()?);
    let last = [batch, image, image, cfg.block_out_channels[0]];
    checks::check_tensor_fits("the VAE decoder's last activation", &last, dtype, available, &culprit)?;
    let vae = Vae::new(cfg.clone(), dtype)?;
    let g = vae.decode_graph(batch, side, side, false, false)?;
    let (store, source) = bench_weights(dir.as_deref(), "diffusion_pytorch_model", &g.graph)?;
    let z = vae.noise(3, &[batch, side, side, cfg.latent_channels])?;
    let (timing, plan) = time_on(kind, &g.graph, &store, &[(Vae::LATENT, &z)], g.image, min_seconds)
        .map_err(|e| e.building(format!("VAE decoder graph ({culprit})")))?;
    let text = format!(
        "vae decode {config}: batch {batch}, latent {side}x{side} -> image {}x{}, {dtype}, backend {kind:?}, weights {source}\n\
         memory: {plan}\n{:.3} ms per call (median of {} calls after 1 warm-up)\n",
        side * factor,
        side * factor,
        timing.seconds * 1e3,
        timing.runs
    );
    Ok(BenchReport { text, timing })
}
