//! `instagen run PIPELINE.toml`: the whole InstaGen pipeline from one config (`config.rs`), each stage a
//! subprocess of this executable in its own folder `OUT/NN-name` (`stages.rs`), skipped when its inputs and
//! config are unchanged and resumed when it was interrupted (`engine.rs`).

pub mod config;
pub mod engine;
pub mod stages;

use std::path::PathBuf;

pub use config::PipelineConfig;
pub use engine::{Action, RunOptions, RunReport};

use crate::error::{Error, Result};

/// What `instagen run` was given.
#[derive(Clone, Debug, Default)]
pub struct RunArgs {
    pub config: PathBuf,
    /// Overrides `[run] out`.
    pub out: Option<PathBuf>,
    /// `TABLE.KEY=VALUE` overrides of the config's keys (a TOML value, else a string).
    pub sets: Vec<String>,
    pub options: RunOptions,
}

/// Loads the config, builds the stages and runs them (or, with `dry_run`, says what would run).
pub fn run(a: &RunArgs) -> Result<RunReport> {
    let cfg = PipelineConfig::load_with(&a.config, &a.sets)?;
    let out = a.out.clone().or_else(|| cfg.run.out.clone()).ok_or_else(|| {
        Error::Other(format!("{}: no run folder: set [run] out or pass --out", a.config.display()))
    })?;
    if out.exists() && !out.is_dir() {
        return Err(Error::Other(format!("{}: the run folder is not a folder", out.display())));
    }
    let stages = stages::build(&cfg, &out)?;
    engine::forced(&stages, &a.options)?;
    let mut _lock = None;
    if !a.options.dry_run {
        std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
        _lock = Some(engine::lock_run_dir(&out)?);
        let mut text = crate::util::files::read_text(&a.config, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(&a.config, e))?;
        for s in &a.sets {
            text.push_str(&format!("\n# --set {s}"));
        }
        let copy = out.join("pipeline.toml");
        crate::util::files::write_atomic(&copy, text.as_bytes()).map_err(|e| Error::io(&copy, e))?;
    }
    let exe = std::env::current_exe().map_err(|e| Error::Other(format!("the path of this executable: {e}")))?;
    let mut exec = engine::Subprocess { exe, echo: true };
    engine::run_stages(&stages, &mut exec, &a.options, &mut |line| eprintln!("{line}"))
}
