//! Checkpoints: one folder per checkpoint, `RUN/checkpoints/step-000123/`, holding
//!
//! - `params.safetensors`: the trained parameters;
//! - `optim.safetensors`: the optimiser state (moments, master weights: whatever tensors the caller passes);
//! - `ema.safetensors`: the EMA weights, when the run keeps them;
//! - `state.json`: [`CheckpointState`] (step, data position, RNG state, the run's config, the binary's version,
//!   loss scale and the caller's scalars).
//!
//! A checkpoint is written into a temporary folder beside the others (`.step-000123.tmp-PID-N`) and renamed
//! into place when every file is written and synced, so a crash never leaves a `step-*` folder that is half
//! written; only folders named `step-N` count. After the rename, all but the newest `keep` are deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::Position;
use crate::error::{Error, Result};
use crate::params::ParamStore;

/// The binary's version, recorded in every checkpoint and required to match on load.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The scalars of a checkpoint (`state.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// Steps completed.
    pub step: u64,
    /// Where the data loader continues.
    pub position: Position,
    /// The training loop's generator state ([`crate::util::Rng::state`]).
    pub rng: u64,
    /// The run's configuration, as the caller described it.
    pub config: serde_json::Value,
    /// `CARGO_PKG_VERSION` of the binary that wrote it.
    pub version: String,
    /// Dynamic loss scale, when the run uses one.
    pub loss_scale: Option<f32>,
    /// Whether `ema.safetensors` is part of the checkpoint.
    pub ema: bool,
    /// Anything else the caller keeps (optimiser step count, scaler counters, ...).
    pub scalars: BTreeMap<String, serde_json::Value>,
    /// Samples skipped so far by lenient data loading.
    #[serde(default)]
    pub skipped_samples: u64,
}

/// A whole checkpoint in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub params: ParamStore,
    pub optim: ParamStore,
    pub ema: Option<ParamStore>,
    pub state: CheckpointState,
}

pub const PARAMS_FILE: &str = "params.safetensors";
pub const OPTIM_FILE: &str = "optim.safetensors";
pub const EMA_FILE: &str = "ema.safetensors";
pub const STATE_FILE: &str = "state.json";

/// `RUN/checkpoints`.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// `RUN/checkpoints/step-000123`.
pub fn checkpoint_dir(run_dir: &Path, step: u64) -> PathBuf {
    checkpoints_dir(run_dir).join(format!("step-{step:06}"))
}

fn step_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step-")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The complete checkpoints of a run (folders `step-N` holding a `state.json`), oldest first. A run without a
/// `checkpoints/` folder has none.
pub fn list(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = checkpoints_dir(run_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let Some(step) = entry.file_name().to_str().and_then(step_of) else { continue };
        if entry.path().join(STATE_FILE).is_file() {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest complete checkpoint of a run, if any.
pub fn latest(run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(list(run_dir)?.pop().map(|(_, p)| p))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Checkpoint {
    /// Write the checkpoint as `RUN/checkpoints/step-NNNNNN` (replacing one of the same step), then delete all
    /// but the newest `keep` (at least this one). Returns the folder.
    pub fn save(&self, run_dir: &Path, keep: usize) -> Result<PathBuf> {
        let parent = checkpoints_dir(run_dir);
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let dir = checkpoint_dir(run_dir, self.state.step);
        let tmp = crate::util::files::temp_path(&dir);
        let written = (|| -> Result<()> {
            std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
            self.params.save_safetensors(&tmp.join(PARAMS_FILE))?;
            self.optim.save_safetensors(&tmp.join(OPTIM_FILE))?;
            if self.state.ema != self.ema.is_some() {
                return Err(Error::Other(format!("checkpoint step {}: state.ema is {} but EMA weights were {}given",
                    self.state.step, self.state.ema, if self.ema.is_some() { "" } else { "not " })));
            }
            if let Some(ema) = &self.ema {
                ema.save_safetensors(&tmp.join(EMA_FILE))?;
            }
            let json = serde_json::to_vec_pretty(&self.state).map_err(|e| Error::Other(format!("state.json: {e}")))?;
            let path = tmp.join(STATE_FILE);
            crate::util::files::write_atomic(&path, &json).map_err(|e| Error::io(&path, e))?;
            fsync_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
            if dir.exists() {
                // Same step saved again (a resumed run repeating its last save): move the old one aside first.
                let old = crate::util::files::temp_path(&dir);
                std::fs::rename(&dir, &old).map_err(|e| Error::io(&dir, e))?;
                std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
                let _ = std::fs::remove_dir_all(&old);
            } else {
                std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
            }
            fsync_dir(&parent).map_err(|e| Error::io(&parent, e))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let all = list(run_dir)?;
        let drop_n = all.len().saturating_sub(keep.max(1));
        for (_, old) in &all[..drop_n] {
            if *old != dir {
                std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
            }
        }
        remove_stale_temps(&parent);
        Ok(dir)
    }

    /// Read and validate a checkpoint folder: every file present and well-formed, and written by this version.
    pub fn load(dir: &Path) -> Result<Checkpoint> {
        let state = read_state(dir)?;
        if state.version != VERSION {
            return Err(Error::Mismatch {
                what: dir.join(STATE_FILE).display().to_string(),
                msg: format!("key \"version\": written by instagen {}, this is instagen {VERSION}", state.version),
            });
        }
        let params = ParamStore::load_safetensors(&dir.join(PARAMS_FILE))?;
        let optim = ParamStore::load_safetensors(&dir.join(OPTIM_FILE))?;
        let ema = if state.ema { Some(ParamStore::load_safetensors(&dir.join(EMA_FILE))?) } else { None };
        Ok(Checkpoint { params, optim, ema, state })
    }
}

/// `state.json` of a checkpoint folder; a parse error names the file and the key.
pub fn read_state(dir: &Path) -> Result<CheckpointState> {
    let path = dir.join(STATE_FILE);
    let text = crate::util::files::read_text(&path, Some(crate::util::files::CONFIG_MAX_BYTES)).map_err(|e| Error::io(&path, e))?;
    crate::util::json::from_object(&text).map_err(|msg| Error::Weights { path, msg })
}

/// Temporary folders left by a process that no longer runs (a crash during a save).
fn remove_stale_temps(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(".step-") else { continue };
        let Some(pid) = rest.split(".tmp-").nth(1).and_then(|t| t.split('-').next()).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Compare a resumed run's configuration with the checkpoint's: the first field that differs (a dotted path,
/// e.g. `optim.lr`) is an error naming both values. Top-level keys in `may_differ` (say, the total step count)
/// are not compared.
pub fn check_config(saved: &serde_json::Value, now: &serde_json::Value, may_differ: &[&str]) -> Result<()> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, skip: &[&str]) -> Option<String> {
        use serde_json::Value::Object;
        match (a, b) {
            (Object(x), Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    if path.is_empty() && skip.contains(&k.as_str()) {
                        continue;
                    }
                    let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    match (x.get(k), y.get(k)) {
                        (Some(u), Some(v)) => {
                            if let Some(d) = walk(&p, u, v, skip) {
                                return Some(d);
                            }
                        }
                        (Some(u), None) => return Some(format!("field '{p}': the checkpoint has {u}, this run does not set it")),
                        (None, Some(v)) => return Some(format!("field '{p}': this run sets {v}, the checkpoint does not have it")),
                        (None, None) => {}
                    }
                }
                None
            }
            _ if a == b => None,
            _ => Some(format!("field '{}': the checkpoint has {a}, this run has {b}", if path.is_empty() { "(config)" } else { path })),
        }
    }
    match walk("", saved, now, may_differ) {
        None => Ok(()),
        Some(msg) => Err(Error::Mismatch { what: "resume: the run's config differs from the checkpoint's".into(), msg }),
    }
}
