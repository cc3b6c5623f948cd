//! The `instagen` command line: parses, calls a library function, prints. No logic here.
//!
//! Numeric flags are range-checked while parsing (a batch, step count or latent side of 0, a NaN or negative
//! time is a usage error naming the flag); backend, dtype and bench kind are typed choices.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use instagen::backend::BackendKind;

#[derive(Parser)]
#[command(name = "instagen", version, about = "Stable Diffusion as an object-detection dataset factory")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where graphs run.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    /// The CPU engine: each op family's fast path where it has one, else the Rust reference.
    Cpu,
    /// The exact Rust reference of every op alone (what `cpu` was before its fast paths; for "before" timings).
    CpuReference,
    /// The CUDA kernels compiled for the CPU through the emulator (slow; for checking kernels without a GPU).
    Emu,
    /// The CUDA kernels on GPU 0.
    Cuda,
}

/// Storage dtype of weights and activations.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

/// What `bench` times.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum BenchKind {
    /// Every kernel bench case (GB/s or TFLOP/s).
    Kernels,
    /// One SD UNet call.
    Unet,
    /// One CLIP text encoder call on 77-token prompts.
    Clip,
    /// One VAE decoder call.
    Vae,
    /// One UNet training step (forward + MSE loss + backward + AdamW), profiled per op on cpu/emu.
    TrainUnet,
    /// One VAE training step (encoder, sample, decoder, L1 + KL, backward, AdamW) of `--config` (a vae/ folder
    /// or sd-v1) at its sample_size, profiled per op on cpu/emu.
    TrainVae,
    /// The executor's cost per node: chains of small elementwise nodes at several sizes.
    Exec,
    /// Fixed CPU cases (SD / fixture UNet, CLIP, VAE, attention, convolution): our time next to PyTorch's,
    /// measured in the same run with the same threads, and the ratio.
    Cpu,
    /// `instagen generate` on a diffusers folder (`--config SD_DIR`): images/s with boxes and the time split.
    Generate,
    /// Faster R-CNN inference and training images/s (ResNet-18/50-FPN at short side 320, ResNet-50-FPN at
    /// 800x1333): ours next to torchvision's on the CPU in the same run, and the ratio.
    Detect,
}

/// `--backend` given, else INSTAGEN_BACKEND, else cuda when a GPU is found, else cpu.
fn backend_kind(b: Option<Backend>) -> instagen::Result<BackendKind> {
    match b {
        Some(Backend::Cpu) => Ok(BackendKind::Cpu),
        Some(Backend::CpuReference) => Ok(BackendKind::CpuReference),
        Some(Backend::Emu) => Ok(BackendKind::Emu),
        Some(Backend::Cuda) => Ok(BackendKind::Cuda),
        None => BackendKind::default_for_machine(),
    }
}

fn dtype(d: Dtype) -> instagen::DType {
    match d {
        Dtype::F32 => instagen::DType::F32,
        Dtype::F16 => instagen::DType::F16,
        Dtype::Bf16 => instagen::DType::BF16,
    }
}

/// An integer >= 1.
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be >= 1".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(format!("not a whole number >= 1 ({e})")),
    }
}

/// A finite number of seconds in [0, 1e6].
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e6).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not a finite number of seconds in [0, 1e6]")),
        Err(e) => Err(format!("not a number ({e})")),
    }
}

/// A finite guidance scale (its range is checked by the pipeline: see `pipeline::checks::GUIDANCE_MAX`).
fn finite(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("{v} is not finite (a number in [0, {}])", instagen::pipeline::checks::GUIDANCE_MAX)),
        Err(e) => Err(format!("not a number ({e})")),
    }
}

/// A positive finite number.
fn positive_f32(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(v) => Err(format!("{v} is not a positive finite number")),
        Err(e) => Err(format!("not a number ({e})")),
    }
}

/// A positive whole number (u64).
fn positive_u64(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be >= 1".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(format!("not a whole number >= 1 ({e})")),
    }
}

#[derive(Subcommand)]
enum DetectCmd {
    /// Train a Faster R-CNN from a run config (sources with per-source loss rules, SGD, 1x schedule); writes
    /// OUT/model.safetensors (torchvision key names) and OUT/labels.json for `detect infer`.
    Train(DetectTrainArgs),
    /// Run a detector on the images of a COCO file; write COCO results.
    Infer(DetectInferArgs),
    /// `infer`, then the COCO evaluator (with --split: base / novel / all AP50).
    Eval {
        #[command(flatten)]
        a: DetectInferArgs,
        /// The base / novel split: ovcoco, or a JSON file (a world.json, or {"base": [names], "novel": [names]}).
        #[arg(long)]
        split: Option<String>,
    },
}

#[derive(clap::Args)]
struct DetectTrainArgs {
    /// The run config JSON (model, optimizer, sources, batch, epochs, seed, flip).
    #[arg(long)]
    config: PathBuf,
    /// The run folder (checkpoints/, metrics.jsonl, curves, model.safetensors, labels.json).
    #[arg(long)]
    out: PathBuf,
    /// Continue from the newest checkpoint of --out.
    #[arg(long)]
    resume: bool,
    /// Total steps (overrides the config's steps / epochs).
    #[arg(long, value_parser = positive_u64)]
    steps: Option<u64>,
    /// Checkpoint every N steps (and after the last).
    #[arg(long, default_value_t = 500, value_parser = positive_u64)]
    save_every: u64,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 3, value_parser = positive)]
    keep: usize,
    /// Data loading threads, 0 to 256 (0: load on the training thread).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=256))]
    workers: u16,
    #[arg(long, value_enum)]
    backend: Option<Backend>,
}

#[derive(clap::Args)]
struct DetectInferArgs {
    /// safetensors with torchvision's Faster R-CNN key names (tools/convert_weights.py makes one from a .pth).
    #[arg(long)]
    weights: PathBuf,
    /// JSON list of category ids, index = label (not needed for torchvision's 91-entry COCO classifier).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// COCO instances JSON listing the images.
    #[arg(long)]
    data: PathBuf,
    /// Folder of the images.
    #[arg(long)]
    images: PathBuf,
    /// Where to write the COCO results JSON.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0.05)]
    score_thresh: f32,
    /// Short side [default: the model.json beside the weights, else 800].
    #[arg(long)]
    min_size: Option<usize>,
    /// Longest side [default: the model.json beside the weights, else 1333].
    #[arg(long)]
    max_size: Option<usize>,
    /// The weights use the caffe-style stride placement (stride on the 1x1 conv).
    #[arg(long)]
    caffe_stride: bool,
    /// Skip (and list) images that are missing or do not decode instead of failing.
    #[arg(long)]
    lenient: bool,
    #[arg(long, value_enum)]
    backend: Option<Backend>,
}

impl DetectInferArgs {
    fn options(&self) -> instagen::pipeline::detect::infer::InferOptions {
        instagen::pipeline::detect::infer::InferOptions {
            weights: self.weights.clone(),
            labels: self.labels.clone(),
            data: self.data.clone(),
            images: self.images.clone(),
            out: self.out.clone(),
            score_thresh: self.score_thresh,
            min_size: self.min_size,
            max_size: self.max_size,
            caffe_stride: self.caffe_stride,
            lenient: self.lenient,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Backends, NVRTC version, compiled kernels with their ptxas figures, GPUs found.
    Info,
    /// A short engine check: train a small MLP, plan and verify a transformer block (on the CPU), then run the
    /// block on the chosen backend and compare.
    Selfcheck {
        /// Default: INSTAGEN_BACKEND, else cuda if a GPU is found, else cpu.
        #[arg(long, value_enum)]
        backend: Option<Backend>,
    },
    /// Run the kernel parity suite on a backend against the CPU reference.
    Parity {
        /// Default: INSTAGEN_BACKEND, else cuda if a GPU is found, else cpu.
        #[arg(long, value_enum)]
        backend: Option<Backend>,
        /// Only cases whose name contains this.
        #[arg(long, default_value = "")]
        filter: String,
        /// Seed of the random inputs (default: from the clock, so every run draws fresh inputs).
        #[arg(long, allow_hyphen_values = true)]
        seed: Option<u64>,
    },
    /// Benchmarks: kernel cases, one UNet / CLIP / VAE call or training step, or the CPU against PyTorch.
    Bench {
        #[arg(value_enum)]
        what: BenchKind,
        /// Default: INSTAGEN_BACKEND, else cuda if a GPU is found, else cpu (`bench cpu`: cpu or cpu-reference,
        /// default cpu).
        #[arg(long, value_enum)]
        backend: Option<Backend>,
        /// Kernel and cpu benches: only cases whose name contains this (`bench cpu`: a comma-separated list of
        /// alternatives).
        #[arg(long, default_value = "")]
        filter: String,
        /// Minimum seconds of timed runs per case (finite, in [0, 1e6]).
        #[arg(long, default_value_t = 0.5, value_parser = seconds, allow_hyphen_values = true)]
        min_seconds: f64,
        /// Model benches: a diffusers model folder (config.json [+ weights]), `sd-v1`, or for the UNet benches
        /// `fixture` (the small test UNet) [default: sd-v1].
        #[arg(long)]
        config: Option<String>,
        /// Model benches: batch size (>= 1) [default: 1].
        #[arg(long, value_parser = positive, allow_hyphen_values = true)]
        batch: Option<usize>,
        /// Model benches: storage dtype [default: f32].
        #[arg(long, value_enum)]
        dtype: Option<Dtype>,
        /// UNet / VAE bench: latent side (default: from the config's sample_size).
        #[arg(long, value_parser = positive, allow_hyphen_values = true)]
        latent: Option<usize>,
        /// CPU threads, 1 to 1024 (rayon's pool; PyTorch gets as many in `bench cpu`) [default:
        /// RAYON_NUM_THREADS, else every CPU].
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024), allow_hyphen_values = true)]
        threads: Option<u16>,
        /// `bench cpu` / `bench detect`: a Python with torch, diffusers and transformers (torchvision and
        /// safetensors for detect), to time PyTorch in the same run
        /// [default: INSTAGEN_TORCH_PYTHON].
        #[arg(long)]
        torch: Option<PathBuf>,
        /// `bench cpu` / `bench detect`: also write the results here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// `bench generate`: a head folder [default: a random head of the paper's sizes].
        #[arg(long)]
        head: Option<PathBuf>,
        /// `bench generate`: DDIM steps [default: 50].
        #[arg(long, value_parser = positive, allow_hyphen_values = true)]
        steps: Option<usize>,
    },

    /// COCO box evaluation (as pycocotools): prints the 12-line table, optionally the open-vocabulary split's
    /// base / novel / all AP50, and writes the figures as JSON.
    Eval {
        /// Ground truth: COCO instances JSON.
        #[arg(long)]
        gt: PathBuf,
        /// Detections: COCO results JSON ([{image_id, category_id, bbox, score}]).
        #[arg(long)]
        dt: PathBuf,
        /// Also report a split's base / novel / all AP50: ovcoco, or a JSON file (a world.json, or
        /// {"base": [names], "novel": [names]}; names resolved against the ground truth's categories).
        #[arg(long)]
        split: Option<String>,
        /// Write the figures as JSON here (must not be --gt or --dt).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Skip (and count) invalid records instead of failing.
        #[arg(long)]
        lenient: bool,
    },

    /// Text to images with SD v1.x: CLIP text encoder, guided DDIM (UNet), VAE decoder; writes
    /// `{seed}_{i}.png`, with --features the t=1 feature levels (safetensors), and last `{seed}.json`.
    Sample {
        /// A diffusers folder (text_encoder/, unet/, vae/, tokenizer/) or a CompVis .safetensors file.
        #[arg(long)]
        weights: PathBuf,
        /// Tokenizer folder (vocab.json + merges.txt or tokenizer.json); needed with a CompVis file.
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long)]
        prompt: String,
        /// DDIM steps (>= 1).
        #[arg(long, default_value_t = 50, value_parser = positive, allow_hyphen_values = true)]
        steps: usize,
        /// Classifier-free guidance scale, in [0, 100].
        #[arg(long, default_value_t = 5.0, value_parser = finite, allow_hyphen_values = true)]
        guidance: f32,
        #[arg(long, default_value_t = 42, allow_hyphen_values = true)]
        seed: u64,
        /// Images (>= 1).
        #[arg(long, default_value_t = 1, value_parser = positive, allow_hyphen_values = true)]
        batch: usize,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Also write the t=1 feature levels.
        #[arg(long)]
        features: bool,
        /// Default: INSTAGEN_BACKEND, else cuda if a GPU is found, else cpu.
        #[arg(long, value_enum)]
        backend: Option<Backend>,
        #[arg(long, value_enum, default_value_t = Dtype::F16)]
        dtype: Dtype,
        /// Latent side (image side / 8 for SD), a multiple of the UNet's downsampling (8 for SD); default: the
        /// UNet's sample_size.
        #[arg(long, value_parser = positive, allow_hyphen_values = true)]
        latent: Option<usize>,
    },

    /// InstaGen stage 1: fine-tune SD's UNet on crops of a COCO detection dataset (frozen CLIP and VAE,
    /// noise-prediction MSE, AdamW, EMA); resumable; writes a diffusers folder RUN/model at the end.
    Finetune(FinetuneArgs),
    /// Faster R-CNN (torchvision layout): `detect infer` writes COCO results, `detect eval` also evaluates.
    #[command(subcommand)]
    Detect(DetectCmd),

    /// InstaGen stages 3-4, the grounding head: init, label, train, selftrain, infer.
    #[command(subcommand)]
    Ground(GroundCmd),

    /// Merge the shard folders of one sharded `instagen generate` run into one dataset folder (every manifest,
    /// record, image and latent checked first; files hard-linked where possible; resumable).
    Merge {
        /// The shard folders (all shards of the run, any order).
        #[arg(required = true)]
        shards: Vec<PathBuf>,
        /// The merged dataset folder (new, empty, or an earlier merge of the same shards).
        #[arg(long)]
        out: PathBuf,
    },

    /// Write a dataset folder (its instances.json) in another layout: `--format yolo` for Ultralytics.
    Export {
        /// The dataset folder (written by `instagen generate` or `instagen merge`).
        dataset: PathBuf,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// The new folder to write.
        #[arg(long)]
        out: PathBuf,
        /// The fraction of images in the validation split, in [0, 1) (0: validate on the training images).
        #[arg(long, default_value_t = 0.1, value_parser = fraction)]
        val_fraction: f64,
        /// Seeds the choice of validation images.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },

    /// The whole pipeline from one TOML config (finetune -> generate base -> detect + label -> ground train ->
    /// generate novel -> ground selftrain -> generate final -> detect train -> eval), each stage in OUT/NN-name;
    /// a rerun skips unchanged finished stages and resumes an interrupted one.
    Run {
        /// The pipeline config (tools/ovcoco.toml is the paper's OV-COCO run).
        config: PathBuf,
        /// The run folder [default: the config's [run] out].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Rerun this stage and every later one (earlier stages must have finished).
        #[arg(long, conflicts_with = "only")]
        from: Option<String>,
        /// Rerun this stage only (the others are left as they are).
        #[arg(long)]
        only: Option<String>,
        /// Print what would run and why; run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Override a key of the config: TABLE.KEY=VALUE (a TOML value, else a string; repeatable), e.g.
        /// --set finetune.enabled=false --set 'detect.epochs=2'.
        #[arg(long = "set", value_name = "TABLE.KEY=VALUE")]
        sets: Vec<String>,
    },

    /// Category names in, a detection dataset out: SD images with the grounding head's boxes, written to a
    /// crash-safe, resumable, shardable dataset folder (generate.json, images/, latents/, records/, instances.json).
    Generate(GenerateArgs),

    /// (Re)write what people look at in a dataset folder: contact sheets (contact/), the static browser
    /// (index.html + thumbs/) and the dataset card (card.md + card/); or check a browser screenshot.
    Views(ViewsArgs),

    /// The embedded default models (models/world/): `models verify` checks every file against MANIFEST.json,
    /// `models pack` writes such a folder from trained models.
    #[command(subcommand)]
    Models(ModelsCmd),

    /// The small SD trained from scratch: `sd init` (a diffusers folder with fresh weights from one config),
    /// `sd text-sims` (how far apart the text encoder puts the captions of different names).
    #[command(subcommand)]
    Sd(SdCmd),

    /// AutoencoderKL training: `vae train`.
    #[command(subcommand)]
    Vae(VaeCmd),

    /// The miniature world: procedural shape scenes with exact boxes and captions (make, sheet).
    #[command(subcommand)]
    World(WorldCmd),
}

/// The layouts `instagen export` writes.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ExportFormat {
    /// Ultralytics YOLO: data.yaml, images/{train,val}, labels/{train,val} (`class cx cy w h`, normalised).
    Yolo,
}

/// A number in [0, 1).
fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not in [0, 1)")),
        Err(e) => Err(format!("not a number ({e})")),
    }
}

/// Image file format of `generate`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ImageFormat {
    Png,
    Jpg,
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// The sampling SD (a diffusers folder; a fine-tuned one from `instagen finetune`) [default: the embedded
    /// world SD, models/world/sd, checked against its manifest].
    #[arg(long)]
    sd: Option<PathBuf>,
    /// A grounding head folder (`instagen ground init|train`), for the feature SD's t=1 feature shapes [default:
    /// the embedded world head, models/world/head].
    #[arg(long)]
    head: Option<PathBuf>,
    /// Category names, comma separated, or a FILE: text (one per line, # comments), a JSON array of names or a COCO
    /// file.
    #[arg(long)]
    categories: String,
    /// Images per category: each (novel) category is the first of this many prompts.
    #[arg(long, value_parser = positive_u64)]
    images_per_category: u64,
    /// The dataset folder (created; a rerun of the same command continues it).
    #[arg(long)]
    out: PathBuf,
    /// The SD whose UNet gives the t=1 features (the ORIGINAL SD when --sd is fine-tuned) [default: --sd].
    #[arg(long)]
    features_sd: Option<PathBuf>,
    /// OV-COCO novel mixing: these categories (a subset of --categories, list or FILE) are each prompt's first;
    /// the others come from all of --categories.
    #[arg(long)]
    novel: Option<String>,
    /// Most categories per prompt (half the prompts name one, half 2..K).
    #[arg(long, default_value_t = 2, value_parser = positive)]
    per_prompt: usize,
    /// Images per batch (>= 1).
    #[arg(long, default_value_t = 1, value_parser = positive, allow_hyphen_values = true)]
    batch: usize,
    /// DDIM steps (>= 1).
    #[arg(long, default_value_t = 50, value_parser = positive, allow_hyphen_values = true)]
    steps: usize,
    /// Classifier-free guidance scale, in [0, 100].
    #[arg(long, default_value_t = 5.0, value_parser = finite, allow_hyphen_values = true)]
    guidance: f32,
    /// Boxes with score >= this are kept, in [0, 1].
    #[arg(long, default_value_t = 0.4, value_parser = finite, allow_hyphen_values = true)]
    score: f32,
    /// Class-wise NMS IoU, in (0, 1].
    #[arg(long, default_value_t = 0.5, value_parser = finite, allow_hyphen_values = true)]
    nms: f32,
    /// Best (query, category) pairs per image before the score threshold.
    #[arg(long, default_value_t = 100, value_parser = positive)]
    top_k: usize,
    /// Run seed: image i's seed is a function of (seed, i).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// This process's shard, i/n (0 <= i < n) [default: from SLURM_ARRAY_TASK_ID/COUNT/MIN, or JOB_COMPLETION_INDEX
    /// with --shards, else 0/1].
    #[arg(long)]
    shard: Option<String>,
    /// Shard count for a Kubernetes indexed job (JOB_COMPLETION_INDEX).
    #[arg(long, value_parser = positive_u64)]
    shards: Option<u64>,
    #[arg(long, value_enum, default_value_t = ImageFormat::Png)]
    format: ImageFormat,
    /// Do not save the t=1 latents (the grounding stages then encode the images instead).
    #[arg(long)]
    no_latents: bool,
    /// Default: INSTAGEN_BACKEND, else cuda if a GPU is found, else cpu.
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Storage dtype of the SD graphs (the head runs in f32).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// Check a models folder against its MANIFEST.json (sizes and SHA-256 of every file) and print what made each
    /// model.
    Verify {
        /// The folder [default: $INSTAGEN_MODELS, else models/world of the source tree].
        dir: Option<PathBuf>,
    },
    /// Write a models folder: OUT/sd (the SD folder with f16 tensors), OUT/head, OUT/MANIFEST.json.
    Pack {
        /// The trained SD (a diffusers folder).
        #[arg(long)]
        sd: PathBuf,
        /// The trained grounding head (a head folder or a run folder with head/).
        #[arg(long)]
        head: PathBuf,
        /// JSON: {"description", "categories": [...], "models": {"sd": {"commands": [...], "seed"}, "head": {...}}}.
        #[arg(long)]
        provenance: PathBuf,
        /// The folder to write (new or empty).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
struct ViewsArgs {
    /// The dataset folder (outputs go here; its instances.json and generate.json are read).
    dataset: PathBuf,
    /// Read this COCO instances file instead of DATASET/instances.json (e.g. real COCO data).
    #[arg(long)]
    instances: Option<PathBuf>,
    /// The folder the images' file_names are relative to [default: DATASET].
    #[arg(long)]
    images: Option<PathBuf>,
    /// Contact-sheet cell side in pixels, 32 to 1024.
    #[arg(long, default_value_t = 192, value_parser = clap::value_parser!(u32).range(32..=1024))]
    cell: u32,
    /// Thumbnail side in pixels, 32 to 1024.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(32..=1024))]
    thumb: u32,
    /// Browser images per page.
    #[arg(long, default_value_t = 96, value_parser = positive, allow_hyphen_values = true)]
    page: usize,
    /// Skip (and count) invalid records of the instances file instead of failing.
    #[arg(long)]
    lenient: bool,
    /// Write nothing: check this screenshot of DATASET/index.html against --layout (see
    /// tools/browser_screenshot.sh); exits non-zero when the boxes are not visible.
    #[arg(long, requires = "layout")]
    check_screenshot: Option<PathBuf>,
    /// With --check-screenshot: the --dump-dom of index.html#layout taken at the same window size.
    #[arg(long, requires = "check_screenshot")]
    layout: Option<PathBuf>,
}

#[derive(Subcommand)]
enum WorldCmd {
    /// Render the captioned corpus, the base-only detection training set and the validation set (COCO JSON +
    /// PNGs) and OUT/world.json; the same seed and options give the same bytes.
    Make {
        /// The world folder (new, or without a world in it).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, allow_hyphen_values = true)]
        seed: u64,
        #[command(flatten)]
        w: WorldArgs,
        /// Images per split: corpus=N,train=N,val=N (any of them) [default: corpus=20000,train=4000,val=1000].
        #[arg(long)]
        counts: Option<String>,
    },
    /// A contact sheet (PNG): one row per category, scenes with an uncovered object of that category.
    Sheet {
        /// The PNG to write.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
        seed: u64,
        #[command(flatten)]
        w: WorldArgs,
        /// Scenes per category (>= 1).
        #[arg(long, default_value_t = 6, value_parser = positive, allow_hyphen_values = true)]
        per_category: usize,
        /// Outline the box of each row's object.
        #[arg(long)]
        boxes: bool,
    },
}

#[derive(clap::Args)]
struct WorldArgs {
    /// Image side in pixels: a multiple of 8 in [32, 512].
    #[arg(long, default_value_t = 64, allow_hyphen_values = true)]
    size: usize,
    /// Comma-separated shape names, in category-id order [default: all twelve].
    #[arg(long)]
    categories: Option<String>,
    /// Comma-separated novel categories (the rest are base) [default: heart,hexagon,moon,bolt].
    #[arg(long)]
    novel: Option<String>,
}

impl WorldArgs {
    fn options(&self, out: &std::path::Path, seed: u64) -> instagen::Result<instagen::world::WorldOptions> {
        let mut o = instagen::world::WorldOptions::new(out, seed).with_names(self.categories.as_deref(), self.novel.as_deref())?;
        o.size = self.size;
        Ok(o)
    }
}

#[derive(Subcommand)]
enum SdCmd {
    /// Write a complete diffusers SD folder (text_encoder/, vae/, unet/, scheduler/, tokenizer/ with the real
    /// CLIP vocabulary, model_index.json) with PyTorch-default-like random weights, sized by --config.
    Init {
        /// The sizes: {"text_encoder": {...}, "vae": {...}, "unet": {...}, "scheduler": {...}} (configs/world_sd.json).
        #[arg(long)]
        config: PathBuf,
        /// The new folder (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// CLIP's bpe_simple_vocab_16e6.txt.gz (the tokenizer's vocabulary and merges).
        #[arg(long, default_value = "../shared/data/clip/bpe_simple_vocab_16e6.txt.gz")]
        vocab: PathBuf,
        /// Text encoder init: torch (PyTorch's per-layer defaults, nn.Embedding N(0, 1)) or clip (transformers'
        /// CLIP init, embeddings N(0, 0.02)).
        #[arg(long, default_value = "torch")]
        text_init: String,
    },
    /// Cosine similarities of "a photograph of a <name>" between names, under the folder's text encoder.
    TextSims {
        /// A diffusers SD folder.
        #[arg(long)]
        sd: PathBuf,
        /// Comma-separated names.
        #[arg(long, value_delimiter = ',')]
        names: Vec<String>,
        #[arg(long, value_enum)]
        backend: Option<Backend>,
    },
}

#[derive(Subcommand)]
enum VaeCmd {
    /// Train the VAE of an SD folder on whole images (reconstruction + KL; no GAN, no LPIPS); resumable;
    /// writes RUN/model (the SD folder with the trained vae/ and its scaling_factor) at the end.
    Train(VaeTrainArgs),
}

#[derive(clap::Args)]
struct VaeTrainArgs {
    /// The SD diffusers folder whose vae/ is trained (e.g. from `instagen sd init`).
    #[arg(long)]
    sd: PathBuf,
    /// A COCO dataset folder (instances.json + images of the VAE's sample_size), or an instances file.
    #[arg(long)]
    data: PathBuf,
    /// The run folder: checkpoints/, metrics.jsonl, loss.png, lr.png, and model/ at the end.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1000, value_parser = positive_u64)]
    steps: u64,
    #[arg(long, default_value_t = 8, value_parser = positive, allow_hyphen_values = true)]
    batch: usize,
    /// AdamW learning rate (constant).
    #[arg(long, default_value_t = 2e-4, value_parser = positive_f32, allow_hyphen_values = true)]
    lr: f32,
    /// Weight of the KL term (LDM's meaning: per image, against the summed reconstruction error).
    #[arg(long, default_value_t = 1e-6, allow_hyphen_values = true)]
    kl_weight: f32,
    /// Reconstruction loss: l1 (LDM's) or mse.
    #[arg(long, default_value = "l1")]
    rec_loss: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, default_value_t = 200, value_parser = positive_u64)]
    save_every: u64,
    #[arg(long, default_value_t = 3, value_parser = positive)]
    keep: usize,
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=256))]
    workers: u16,
    #[arg(long, value_parser = positive_f32)]
    max_grad_norm: Option<f32>,
    /// Images whose latents set scaling_factor (1 / their std).
    #[arg(long, default_value_t = 256, value_parser = positive, allow_hyphen_values = true)]
    scale_images: usize,
    #[arg(long, value_enum)]
    backend: Option<Backend>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DataModeArg {
    /// Crops around the boxes of a detection set (InstaGen stage 1).
    Crops,
    /// Whole images with a `caption` field (the world corpus), for training from scratch.
    Captions,
}

#[derive(Subcommand)]
enum GroundCmd {
    /// A randomly initialised head for an SD model's t=1 feature shapes (the start of `ground train`).
    Init {
        /// `tiny`, `default` (the paper's sizes) or a config JSON file; feature channels and text width come from
        /// the SD model.
        #[arg(long, default_value = "default")]
        config: String,
        /// The ORIGINAL SD diffusers folder whose features the head reads.
        #[arg(long)]
        sd: PathBuf,
        /// The head folder to write (config.json, levels.json, head.safetensors).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// A detector's COCO results on generated base images -> grounding labels (boxes of each image's prompt
    /// categories with score >= alpha), written as a COCO instances file.
    Label {
        /// The generated dataset: a folder with instances.json (each image with its `prompt`).
        #[arg(long)]
        dataset: PathBuf,
        /// The detector's results on it (COCO results JSON).
        #[arg(long)]
        detections: PathBuf,
        /// Keep boxes with score >= alpha.
        #[arg(long, default_value_t = 0.8, value_parser = finite, allow_hyphen_values = true)]
        alpha: f32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Supervised training of a head on grounding labels (AdamW 1e-4, weight decay 1e-4, clip 0.1, 12 epochs,
    /// x0.1 at epoch 11, batch 32); resumable; writes RUN/head at the end.
    Train(GroundTrainArgs),
    /// Mean-teacher self-training on novel images, from a `ground train` run's student at the teacher epoch.
    Selftrain(GroundSelftrainArgs),
    /// Boxes of each image's prompt categories (top-k, score threshold, class-wise NMS) as COCO results.
    Infer(GroundInferArgs),
}

#[derive(clap::Args)]
struct GroundTrainArgs {
    /// The ORIGINAL SD diffusers folder (frozen; t=1 features and category-name embeddings).
    #[arg(long)]
    sd: PathBuf,
    /// Grounding labels (`ground label`'s output).
    #[arg(long)]
    labels: PathBuf,
    /// The head to start from (`ground init`).
    #[arg(long)]
    head: PathBuf,
    /// The run folder.
    #[arg(long)]
    out: PathBuf,
    /// Read features from (and write missing ones to) this folder instead of recomputing them every epoch.
    #[arg(long)]
    features_cache: Option<PathBuf>,
    #[arg(long, default_value_t = 12, value_parser = positive_u64)]
    epochs: u64,
    /// Total steps instead of --epochs.
    #[arg(long, value_parser = positive_u64)]
    steps: Option<u64>,
    #[arg(long, default_value_t = 32, value_parser = positive, allow_hyphen_values = true)]
    batch: usize,
    #[arg(long, default_value_t = 1e-4, value_parser = positive_f32, allow_hyphen_values = true)]
    lr: f32,
    #[arg(long, default_value_t = 1e-4, value_parser = finite, allow_hyphen_values = true)]
    weight_decay: f32,
    #[arg(long, default_value_t = 0.1, value_parser = positive_f32, allow_hyphen_values = true)]
    max_grad_norm: f32,
    /// The learning rate is x0.1 from this epoch on.
    #[arg(long, default_value_t = 11)]
    lr_drop_epoch: u64,
    /// Snapshot the student at the end of this epoch (where `ground selftrain` starts).
    #[arg(long, default_value_t = 6)]
    teacher_epoch: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Checkpoint every N steps (default: every epoch).
    #[arg(long, value_parser = positive_u64)]
    save_every: Option<u64>,
    #[arg(long, default_value_t = 3, value_parser = positive)]
    keep: usize,
    #[arg(long)]
    resume: bool,
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Storage dtype of the frozen SD graphs.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
}

#[derive(clap::Args)]
struct GroundSelftrainArgs {
    /// The `ground train` run folder (its settings and its student snapshot at the teacher epoch).
    #[arg(long)]
    run: PathBuf,
    /// The generated novel images (a folder with instances.json; each image with its prompt).
    #[arg(long)]
    novel_dataset: PathBuf,
    /// The self-training run folder [default: RUN/selftrain].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Novel category names, comma separated [default: the novel images' prompt categories that no base image
    /// prompts].
    #[arg(long)]
    novel_categories: Option<String>,
    /// Teacher boxes with score > beta become targets.
    #[arg(long, default_value_t = 0.4, value_parser = finite, allow_hyphen_values = true)]
    beta: f32,
    /// EMA momentum of the teacher, every step.
    #[arg(long, default_value_t = 0.999, value_parser = positive_f32, allow_hyphen_values = true)]
    momentum: f32,
    /// Class-wise NMS IoU on the teacher's boxes.
    #[arg(long, default_value_t = 0.5, value_parser = positive_f32, allow_hyphen_values = true)]
    nms: f32,
    /// Total steps [default: the base run's epochs after the teacher epoch].
    #[arg(long, value_parser = positive_u64)]
    steps: Option<u64>,
    #[arg(long, value_parser = positive_u64)]
    save_every: Option<u64>,
    #[arg(long, default_value_t = 3, value_parser = positive)]
    keep: usize,
    #[arg(long)]
    resume: bool,
    #[arg(long, value_enum)]
    backend: Option<Backend>,
}

#[derive(clap::Args)]
struct GroundInferArgs {
    /// A head folder, or a run folder with head/.
    #[arg(long)]
    head: PathBuf,
    /// The ORIGINAL SD diffusers folder.
    #[arg(long)]
    sd: PathBuf,
    /// A folder with instances.json (each image with its prompt).
    #[arg(long)]
    dataset: PathBuf,
    /// Comma-separated category names to detect [default: every prompt category].
    #[arg(long)]
    categories: Option<String>,
    /// COCO results JSON to write.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    features_cache: Option<PathBuf>,
    #[arg(long, default_value_t = 8, value_parser = positive, allow_hyphen_values = true)]
    batch: usize,
    #[arg(long, default_value_t = 100, value_parser = positive, allow_hyphen_values = true)]
    top_k: usize,
    #[arg(long, default_value_t = 0.05, value_parser = finite, allow_hyphen_values = true)]
    score_thresh: f32,
    #[arg(long, default_value_t = 0.5, value_parser = positive_f32, allow_hyphen_values = true)]
    nms: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
}

#[derive(clap::Args)]
struct FinetuneArgs {
    /// The SD diffusers folder to start from (text_encoder/, vae/, unet/, tokenizer/, scheduler/).
    #[arg(long)]
    weights: PathBuf,
    /// COCO instances JSON (boxes and category names).
    #[arg(long)]
    data: PathBuf,
    /// The folder of its images.
    #[arg(long)]
    images: PathBuf,
    /// The run folder: checkpoints/, metrics.jsonl, loss.png, lr.png, and model/ at the end.
    #[arg(long)]
    out: PathBuf,
    /// `base` (the 48 OV-COCO base classes), `all`, or a comma list of category names.
    #[arg(long, default_value = "base")]
    categories: String,
    /// Total optimiser steps (default: --epochs).
    #[arg(long, value_parser = positive_u64, conflicts_with = "epochs")]
    steps: Option<u64>,
    /// Epochs over the crops (one crop per usable box); default 6 when --steps is not given.
    #[arg(long, value_parser = positive_u64)]
    epochs: Option<u64>,
    /// Crops per step (>= 1).
    #[arg(long, default_value_t = 1, value_parser = positive, allow_hyphen_values = true)]
    batch: usize,
    /// AdamW learning rate (constant).
    #[arg(long, default_value_t = 1e-4, value_parser = positive_f32, allow_hyphen_values = true)]
    lr: f32,
    /// EMA decay of the UNet weights (diffusers EMAModel: min(decay, (1+k)/(10+k)) at update k).
    #[arg(long, default_value_t = 0.9999, value_parser = positive_f32, allow_hyphen_values = true)]
    ema_decay: f32,
    /// Crop side in pixels (a multiple of the VAE downscale times the UNet's; 512 for SD v1.x).
    #[arg(long, default_value_t = 512, value_parser = positive, allow_hyphen_values = true)]
    resolution: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Checkpoint every N steps (and after the last).
    #[arg(long, default_value_t = 500, value_parser = positive_u64)]
    save_every: u64,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 3, value_parser = positive)]
    keep: usize,
    /// Continue from the newest checkpoint of --out.
    #[arg(long)]
    resume: bool,
    /// Data loading threads, 0 to 256 (0: load on the training thread).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=256))]
    workers: u16,
    /// Skip (count and report) unreadable images and bad boxes instead of failing.
    #[arg(long)]
    lenient: bool,
    /// Clip the global gradient norm to this.
    #[arg(long, value_parser = positive_f32)]
    max_grad_norm: Option<f32>,
    /// Default: INSTAGEN_BACKEND, else cuda if a GPU is found, else cpu.
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    /// Storage dtype of the models; f16/bf16 train with f32 master weights, f16 with dynamic loss scaling.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// crops (stage 1) or captions (whole images of --resolution with a `caption` field; --categories unused).
    #[arg(long, value_enum, default_value_t = DataModeArg::Crops)]
    data_mode: DataModeArg,
    /// Captions mode: train this fraction of samples on the empty prompt (classifier-free guidance's
    /// unconditional branch; SD used 0.1).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    caption_dropout: f32,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Info => {
            print!("{}", instagen::info::report());
            Ok(())
        }
        Cmd::Selfcheck { backend } => {
            backend_kind(backend).and_then(instagen::pipeline::selfcheck::run).map(|s| print!("{s}"))
        }
        Cmd::Parity { backend, filter, seed } => {
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            });
            backend_kind(backend).and_then(|k| instagen::pipeline::kernels::parity(k, &filter, seed)).map(|s| print!("{s}"))
        }
        Cmd::Bench { what, backend, filter, min_seconds, config, batch, dtype: d, latent, threads, torch, json, head, steps } => {
            use instagen::pipeline::{bench_cpu, kernels, sample, txt2img};
            let model_flags = config.is_some() || batch.is_some() || d.is_some() || latent.is_some();
            let shape_flags = config.is_some() || batch.is_some() || latent.is_some();
            let (config, batch, d) = (config.unwrap_or_else(|| "sd-v1".into()), batch.unwrap_or(1), dtype(d.unwrap_or(Dtype::F32)));
            let kind = match (what, backend) {
                (BenchKind::Cpu | BenchKind::Detect, None) => Ok(BackendKind::Cpu),
                _ => backend_kind(backend),
            };
            let usage = match what {
                BenchKind::Cpu if model_flags => Some("--config, --batch, --dtype and --latent do not apply to bench cpu (its cases are fixed)"),
                BenchKind::Detect if shape_flags => {
                    Some("--config, --batch and --latent do not apply to bench detect (its cases are fixed)")
                }
                _ if !matches!(what, BenchKind::Generate) && (head.is_some() || steps.is_some()) => {
                    Some("--head and --steps apply to bench generate only")
                }
                BenchKind::Cpu | BenchKind::Detect => None,
                _ if torch.is_some() || json.is_some() => Some("--torch and --json apply to bench cpu and bench detect only"),
                BenchKind::Generate if config == "sd-v1" => Some("bench generate needs --config SD_DIR (a diffusers folder)"),
                _ => None,
            };
            match usage {
                Some(u) => Err(instagen::Error::Other(u.into())),
                None => threads.map_or(Ok(()), |t| bench_cpu::set_threads(t.into())),
            }
            .and(kind)
            .and_then(|k| match what {
                BenchKind::Kernels => kernels::bench(k, &filter, min_seconds),
                BenchKind::Unet => sample::bench_unet(k, &config, batch, latent, d, min_seconds).map(|r| r.text),
                BenchKind::Clip => txt2img::bench_clip(k, &config, batch, d, min_seconds).map(|r| r.text),
                BenchKind::Vae => txt2img::bench_vae(k, &config, batch, latent, d, min_seconds).map(|r| r.text),
                BenchKind::TrainUnet => {
                    instagen::pipeline::finetune::bench::bench_train_unet(k, &config, batch, latent, d, min_seconds).map(|r| r.text)
                }
                BenchKind::TrainVae => instagen::pipeline::sdtrain::vae::bench_train_vae(k, &config, batch, min_seconds).map(|r| r.text),
                BenchKind::Exec => kernels::bench_exec(k, min_seconds),
                BenchKind::Generate => {
                    let o = instagen::pipeline::generate::bench::BenchOptions {
                        sd: PathBuf::from(&config),
                        head: head.clone(),
                        batch,
                        steps: steps.unwrap_or(50),
                        dtype: d,
                        min_seconds,
                    };
                    instagen::pipeline::generate::bench::bench(k, &o)
                }
                BenchKind::Cpu => {
                    let torch = bench_cpu::torch_python(torch);
                    bench_cpu::run(&bench_cpu::CpuBenchOptions { kind: k, filter: filter.clone(), min_seconds, torch, json })
                        .map(|r| r.to_string())
                }
                BenchKind::Detect => {
                    let o = instagen::pipeline::bench_detect::DetectBenchOptions {
                        kind: k,
                        filter: filter.clone(),
                        min_seconds,
                        dtype: d,
                        torch: bench_cpu::torch_python(torch),
                        json,
                    };
                    instagen::pipeline::bench_detect::run(&o).map(|r| r.to_string())
                }
            })
            .map(|s| print!("{s}"))
        }

        Cmd::Eval { gt, dt, split, json, lenient } => {
            instagen::pipeline::eval::run(&gt, &dt, split.as_deref(), json.as_deref(), lenient).map(|s| print!("{s}"))
        }

        Cmd::Sample { weights, tokenizer, prompt, steps, guidance, seed, batch, out, features, backend, dtype: d, latent } => {
            backend_kind(backend)
                .and_then(|k| {
                    let o = instagen::pipeline::txt2img::Txt2ImgOptions {
                        weights, tokenizer, prompt, steps, guidance, seed, batch, out, features, dtype: dtype(d), latent, progress: true,
                    };
                    instagen::pipeline::txt2img::run(k, &o)
                })
                .map(|r| print!("{}", r.text()))
        }
        Cmd::Finetune(a) => backend_kind(a.backend)
            .and_then(|k| {
                let o = instagen::pipeline::finetune::FinetuneOptions {
                    weights: a.weights,
                    data: a.data,
                    images: a.images,
                    out: a.out,
                    categories: a.categories,
                    steps: a.steps,
                    epochs: a.epochs,
                    batch: a.batch,
                    lr: a.lr,
                    ema_decay: a.ema_decay,
                    resolution: a.resolution,
                    seed: a.seed,
                    save_every: a.save_every,
                    keep: a.keep,
                    resume: a.resume,
                    workers: a.workers as usize,
                    lenient: a.lenient,
                    dtype: dtype(a.dtype),
                    max_grad_norm: a.max_grad_norm,
                    data_mode: match a.data_mode {
                        DataModeArg::Crops => instagen::pipeline::finetune::DataMode::Crops,
                        DataModeArg::Captions => instagen::pipeline::finetune::DataMode::Captions,
                    },
                    caption_dropout: a.caption_dropout,
                };
                instagen::pipeline::finetune::run(k, &o)
            })
            .map(|r| print!("{r}")),
        Cmd::Detect(DetectCmd::Train(a)) => backend_kind(a.backend).and_then(|k| {
            let o = instagen::pipeline::detect::train::TrainOptions {
                config: a.config,
                out: a.out,
                resume: a.resume,
                steps: a.steps,
                save_every: a.save_every,
                keep: a.keep,
                workers: a.workers as usize,
                progress: true,
            };
            instagen::with_backend!(k, |mk| instagen::pipeline::detect::train::run(&o, mk)).map(|r| print!("{r}"))
        }),
        Cmd::Detect(DetectCmd::Infer(a)) => backend_kind(a.backend).and_then(|k| {
            let o = a.options();
            instagen::with_backend!(k, |mk| instagen::pipeline::detect::infer::infer(&o, mk))
                .map(|(r, _, _)| print!("{}", instagen::pipeline::detect::infer::summary(&r, &o.out)))
        }),
        Cmd::Detect(DetectCmd::Eval { a, split }) => backend_kind(a.backend).and_then(|k| {
            let o = a.options();
            instagen::with_backend!(k, |mk| instagen::pipeline::detect::infer::eval(&o, split.as_deref(), mk)).map(|s| print!("{s}"))
        }),
        Cmd::Ground(g) => ground(g),
        Cmd::Merge { shards, out } => {
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            instagen::pipeline::dataset::merge::merge(&instagen::pipeline::dataset::merge::MergeOptions { shards, out, command })
                .map(|r| print!("{r}"))
        }
        Cmd::Export { dataset, format, out, val_fraction, seed } => {
            use instagen::pipeline::dataset::export;
            let format = match format {
                ExportFormat::Yolo => export::ExportFormat::Yolo,
            };
            export::export(&export::ExportOptions { dataset, format, out, val_fraction, seed }).map(|r| print!("{r}"))
        }
        Cmd::Run { config, out, from, only, dry_run, sets } => {
            let a = instagen::pipeline::run::RunArgs { config, out, sets, options: instagen::pipeline::run::RunOptions { from, only, dry_run } };
            instagen::pipeline::run::run(&a).map(|r| print!("{r}"))
        }
        Cmd::Generate(a) => generate(a),
        Cmd::Views(a) => views(a),
        Cmd::Models(ModelsCmd::Verify { dir }) => {
            instagen::pipeline::embedded::verify(&dir.unwrap_or_else(instagen::pipeline::embedded::default_dir)).map(|b| print!("{b}"))
        }
        Cmd::Models(ModelsCmd::Pack { sd, head, provenance, out }) => {
            instagen::pipeline::embedded::pack(&instagen::pipeline::embedded::PackOptions { sd, head, provenance, out })
                .map(|b| print!("{b}"))
        }
        Cmd::Sd(SdCmd::Init { config, out, seed, vocab, text_init }) => instagen::pipeline::sdtrain::TextInit::parse(&text_init)
            .and_then(|t| instagen::pipeline::sdtrain::init(&config, &out, seed, &vocab, t))
            .map(|r| print!("{r}")),
        Cmd::Sd(SdCmd::TextSims { sd, names, backend }) => {
            backend_kind(backend).and_then(|k| instagen::pipeline::sdtrain::text_sims(k, &sd, &names)).map(|r| print!("{r}"))
        }
        Cmd::Vae(VaeCmd::Train(a)) => backend_kind(a.backend).and_then(|k| {
            let o = instagen::pipeline::sdtrain::VaeTrainOptions {
                sd: a.sd,
                data: a.data,
                out: a.out,
                steps: a.steps,
                batch: a.batch,
                lr: a.lr,
                kl_weight: a.kl_weight,
                rec: instagen::pipeline::sdtrain::RecLoss::parse(&a.rec_loss)?,
                seed: a.seed,
                save_every: a.save_every,
                keep: a.keep,
                resume: a.resume,
                workers: a.workers as usize,
                max_grad_norm: a.max_grad_norm,
                scale_images: a.scale_images,
            };
            instagen::pipeline::sdtrain::vae_train(k, &o).map(|r| print!("{r}"))
        }),
        Cmd::World(WorldCmd::Make { out, seed, w, counts }) => w
            .options(&out, seed)
            .and_then(|mut o| {
                if let Some(c) = counts {
                    o.counts = instagen::world::Counts::parse(&c)?;
                }
                instagen::world::make(&o)
            })
            .map(|r| print!("{r}")),
        Cmd::World(WorldCmd::Sheet { out, seed, w, per_category, boxes }) => w
            .options(&out, seed)
            .and_then(|o| instagen::world::contact_sheet(&o, per_category, boxes))
            .and_then(|img| Ok(instagen::detection::coco::write_image(&out, &img)?))
            .map(|()| println!("contact sheet written to {}", out.display())),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn generate(a: GenerateArgs) -> instagen::Result<()> {
    use instagen::pipeline::generate::{self, plan, shard};
    let kind = backend_kind(a.backend)?;
    let shard = shard::resolve(a.shard.as_deref(), a.shards, |k| std::env::var(k).ok())?;
    let categories = plan::read_categories(&a.categories, "--categories")?;
    let (sd, head) = match (a.sd, a.head) {
        (Some(sd), Some(head)) => (sd, head),
        (sd, head) => {
            let b = instagen::pipeline::embedded::verify(&instagen::pipeline::embedded::default_dir())?;
            let unknown: Vec<&str> = categories.iter().filter(|c| !b.manifest.categories.contains(c)).map(String::as_str).collect();
            if !unknown.is_empty() {
                eprintln!(
                    "note: the embedded models ({}) were trained on {}; they know nothing of {}",
                    b.dir.display(),
                    b.manifest.categories.join(", "),
                    unknown.join(", ")
                );
            }
            (sd.unwrap_or_else(|| b.sd()), head.unwrap_or_else(|| b.head()))
        }
    };
    let o = generate::GenerateOptions {
        sd,
        features_sd: a.features_sd,
        head,
        categories,
        novel: a.novel.as_deref().map(|n| plan::read_categories(n, "--novel")).transpose()?,
        images_per_category: a.images_per_category,
        per_prompt: a.per_prompt,
        batch: a.batch,
        steps: a.steps,
        guidance: a.guidance,
        score: a.score,
        nms: a.nms,
        top_k: a.top_k,
        seed: a.seed,
        shard,
        format: match a.format {
            ImageFormat::Png => generate::ImageFormat::Png,
            ImageFormat::Jpg => generate::ImageFormat::Jpg,
        },
        latents: !a.no_latents,
        dtype: dtype(a.dtype),
        out: a.out,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        progress: true,
    };
    generate::run(kind, &o).map(|r| print!("{r}"))
}

fn views(a: ViewsArgs) -> instagen::Result<()> {
    use instagen::pipeline::views;
    if let (Some(png), Some(layout)) = (&a.check_screenshot, &a.layout) {
        let r = views::screenshot::check(png, layout)?;
        print!("{r}");
        return if r.passed() { Ok(()) } else { Err(instagen::Error::Other("the screenshot does not show the boxes".into())) };
    }
    let o = views::ViewOptions { instances: a.instances, images: a.images, cell: a.cell, thumb: a.thumb, page: a.page, lenient: a.lenient };
    views::write_views(&a.dataset, &o).map(|r| print!("{r}"))
}

fn ground(cmd: GroundCmd) -> instagen::Result<()> {
    use instagen::pipeline::ground;
    match cmd {
        GroundCmd::Init { config, sd, out, seed } => ground::init(&config, &sd, &out, seed).map(|r| print!("{r}")),
        GroundCmd::Label { dataset, detections, alpha, out } => ground::label(&dataset, &detections, alpha, &out).map(|r| print!("{r}")),
        GroundCmd::Train(a) => backend_kind(a.backend)
            .and_then(|k| {
                let o = ground::TrainOptions {
                    sd: a.sd,
                    labels: a.labels,
                    head: a.head,
                    out: a.out,
                    features_cache: a.features_cache,
                    epochs: a.epochs,
                    steps: a.steps,
                    batch: a.batch,
                    lr: a.lr,
                    weight_decay: a.weight_decay,
                    max_grad_norm: a.max_grad_norm,
                    lr_drop_epoch: a.lr_drop_epoch,
                    teacher_epoch: a.teacher_epoch,
                    seed: a.seed,
                    save_every: a.save_every,
                    keep: a.keep,
                    resume: a.resume,
                    workers: 0,
                    dtype: dtype(a.dtype),
                };
                ground::run_train(k, &o)
            })
            .map(|r| print!("{r}")),
        GroundCmd::Selftrain(a) => backend_kind(a.backend)
            .and_then(|k| {
                let o = ground::SelftrainOptions {
                    run: a.run,
                    novel: a.novel_dataset,
                    out: a.out,
                    novel_categories: ground::infer::split_names(a.novel_categories.as_deref()),
                    beta: a.beta,
                    momentum: a.momentum,
                    nms: a.nms,
                    steps: a.steps,
                    save_every: a.save_every,
                    keep: a.keep,
                    resume: a.resume,
                    workers: 0,
                };
                ground::run_selftrain(k, &o)
            })
            .map(|r| print!("{r}")),
        GroundCmd::Infer(a) => backend_kind(a.backend)
            .and_then(|k| {
                let o = ground::InferOptions {
                    head: a.head,
                    sd: a.sd,
                    dataset: a.dataset,
                    categories: ground::infer::split_names(a.categories.as_deref()),
                    out: a.out,
                    features_cache: a.features_cache,
                    batch: a.batch,
                    top_k: a.top_k,
                    score_thresh: a.score_thresh,
                    nms: a.nms,
                    dtype: dtype(a.dtype),
                    seed: a.seed,
                };
                ground::run_infer(k, &o)
            })
            .map(|r| print!("{r}")),
    }
}
