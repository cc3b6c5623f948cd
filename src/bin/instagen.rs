//! The `instagen` command line: parses, calls a library function, prints. No logic here.

use clap::{Parser, Subcommand};
use instagen::backend::BackendKind;

#[derive(Parser)]
#[command(name = "instagen", version, about = "Stable Diffusion as an object-detection dataset factory")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Backends, NVRTC version, compiled kernels with their ptxas figures, GPUs found.
    Info,
    /// A short engine check: train a small MLP, plan and verify a transformer block (on the CPU), then run the
    /// block on the chosen backend and compare.
    Selfcheck {
        /// cpu, emu or cuda (default: INSTAGEN_BACKEND, else cuda if a GPU is found, else cpu).
        #[arg(long)]
        backend: Option<String>,
    },
    /// Run the kernel parity suite on a backend against the CPU reference.
    Parity {
        /// cpu, emu or cuda (default: INSTAGEN_BACKEND, else cuda if a GPU is found, else cpu).
        #[arg(long)]
        backend: Option<String>,
        /// Only cases whose name contains this.
        #[arg(long, default_value = "")]
        filter: String,
        /// Seed of the random inputs (default: from the clock, so every run draws fresh inputs).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Benchmarks: `kernels` times every kernel bench case on a backend; `unet` times one UNet call.
    Bench {
        /// What to bench: kernels, unet.
        what: String,
        #[arg(long)]
        backend: Option<String>,
        #[arg(long, default_value = "")]
        filter: String,
        /// Minimum seconds of timed runs per case.
        #[arg(long, default_value_t = 0.5)]
        min_seconds: f64,
        /// Model benches: a diffusers model folder (config.json [+ weights]) or `sd-v1`.
        #[arg(long, default_value = "sd-v1")]
        config: String,
        /// Model benches: batch size.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Model benches: storage dtype (f32, f16, bf16).
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// UNet bench: latent side (default: the config's sample_size).
        #[arg(long)]
        latent: Option<usize>,
    },

    /// COCO box evaluation (as pycocotools): prints the 12-line table, optionally the open-vocabulary split's
    /// base / novel / all AP50, and writes the figures as JSON.
    Eval {
        /// Ground truth: COCO instances JSON.
        #[arg(long)]
        gt: std::path::PathBuf,
        /// Detections: COCO results JSON ([{image_id, category_id, bbox, score}]).
        #[arg(long)]
        dt: std::path::PathBuf,
        /// Also report a split's base / novel / all AP50: ovcoco.
        #[arg(long)]
        split: Option<String>,
        /// Write the figures as JSON here.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Skip (and count) invalid records instead of failing.
        #[arg(long)]
        lenient: bool,
    },

    /// Text to images with SD v1.x: CLIP text encoder, guided DDIM (UNet), VAE decoder; writes
    /// `{seed}_{i}.png`, `{seed}.json` and with --features the t=1 feature levels (safetensors).
    Sample {
        /// A diffusers folder (text_encoder/, unet/, vae/, tokenizer/) or a CompVis .safetensors file.
        #[arg(long)]
        weights: std::path::PathBuf,
        /// Tokenizer folder (vocab.json + merges.txt or tokenizer.json); needed with a CompVis file.
        #[arg(long)]
        tokenizer: Option<std::path::PathBuf>,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 50)]
        steps: usize,
        #[arg(long, default_value_t = 5.0)]
        guidance: f32,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Output folder.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Also write the t=1 feature levels.
        #[arg(long)]
        features: bool,
        #[arg(long)]
        backend: Option<String>,
        /// f16, f32 or bf16.
        #[arg(long, default_value = "f16")]
        dtype: String,
        /// Latent side (image side / 8 for SD); default: the UNet's sample_size.
        #[arg(long)]
        latent: Option<usize>,
    },
}

fn backend_kind(s: Option<String>) -> instagen::Result<BackendKind> {
    match s {
        Some(s) => BackendKind::parse(&s),
        None => BackendKind::default_for_machine(),
    }
}

fn parse_dtype(s: &str) -> instagen::Result<instagen::DType> {
    match s {
        "f32" => Ok(instagen::DType::F32),
        "f16" => Ok(instagen::DType::F16),
        "bf16" => Ok(instagen::DType::BF16),
        other => Err(instagen::Error::Other(format!("unknown dtype '{other}' (f32, f16, bf16)"))),
    }
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
        Cmd::Bench { what, backend, filter, min_seconds, config, batch, dtype, latent } => match what.as_str() {
            "kernels" => backend_kind(backend)
                .and_then(|k| instagen::pipeline::kernels::bench(k, &filter, min_seconds))
                .map(|s| print!("{s}")),
            "unet" => parse_dtype(&dtype)
                .and_then(|d| {
                    let k = backend_kind(backend)?;
                    instagen::pipeline::sample::bench_unet(k, &config, batch, latent, d, min_seconds)
                })
                .map(|s| print!("{s}")),
            "clip" => parse_dtype(&dtype)
                .and_then(|d| instagen::pipeline::txt2img::bench_clip(backend_kind(backend)?, &config, batch, d, min_seconds))
                .map(|s| print!("{s}")),
            "vae" => parse_dtype(&dtype)
                .and_then(|d| instagen::pipeline::txt2img::bench_vae(backend_kind(backend)?, &config, batch, latent, d, min_seconds))
                .map(|s| print!("{s}")),
            other => Err(instagen::Error::Other(format!("unknown bench '{other}' (kernels, unet, clip, vae)"))),
        },

        Cmd::Eval { gt, dt, split, json, lenient } => {
            instagen::detection::eval::run_cli(&gt, &dt, split.as_deref(), json.as_deref(), lenient).map(|s| print!("{s}"))
        }

        Cmd::Sample { weights, tokenizer, prompt, steps, guidance, seed, batch, out, features, backend, dtype, latent } => {
            parse_dtype(&dtype)
                .and_then(|dtype| {
                    let k = backend_kind(backend)?;
                    let o = instagen::pipeline::txt2img::Txt2ImgOptions {
                        weights, tokenizer, prompt, steps, guidance, seed, batch, out, features, dtype, latent, progress: true,
                    };
                    instagen::pipeline::txt2img::run(k, &o)
                })
                .map(|r| print!("{}", r.text()))
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
