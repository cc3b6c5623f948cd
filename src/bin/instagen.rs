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
    /// Benchmarks: `kernels` times every kernel bench case on a backend.
    Bench {
        /// What to bench: kernels.
        what: String,
        #[arg(long)]
        backend: Option<String>,
        #[arg(long, default_value = "")]
        filter: String,
        /// Minimum seconds of timed runs per case.
        #[arg(long, default_value_t = 0.5)]
        min_seconds: f64,
    },

    // @coco
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

    // @models

    // @unet

}

fn backend_kind(s: Option<String>) -> instagen::Result<BackendKind> {
    match s {
        Some(s) => BackendKind::parse(&s),
        None => BackendKind::default_for_machine(),
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
        Cmd::Bench { what, backend, filter, min_seconds } => match what.as_str() {
            "kernels" => backend_kind(backend)
                .and_then(|k| instagen::pipeline::kernels::bench(k, &filter, min_seconds))
                .map(|s| print!("{s}")),
            other => Err(instagen::Error::Other(format!("unknown bench '{other}' (kernels)"))),
        },

        // @coco
        Cmd::Eval { gt, dt, split, json, lenient } => {
            instagen::detection::eval::run_cli(&gt, &dt, split.as_deref(), json.as_deref(), lenient).map(|s| print!("{s}"))
        }

        // @models

        // @unet

    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
