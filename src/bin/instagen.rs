//! The `instagen` command line: parses, calls a library function, prints. No logic here.

use clap::{Parser, Subcommand};

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
    /// A short engine check on the CPU: train a small MLP, plan and verify a transformer block.
    Selfcheck,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Info => {
            print!("{}", instagen::info::report());
            Ok(())
        }
        Cmd::Selfcheck => instagen::pipeline::selfcheck::run().map(|s| print!("{s}")),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
