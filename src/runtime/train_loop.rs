//! A generic training loop: pulls batches from a [`Loader`], calls the caller's [`TrainTask::step`], logs every
//! step ([`RunLog`]), checkpoints every `save_every` steps and at the end ([`Checkpoint`]), resumes from the
//! newest checkpoint (parameters, optimiser state, EMA, loss scale, data position, RNG, step), and stops on a
//! loss that is not finite unless the step says it was skipped by loss scaling.
//!
//! It knows nothing of models or optimisers: the trainer hands over and takes back its state as [`TrainState`]
//! (named tensors and JSON scalars).
//!
//! [`kill_at_checkpoint`] runs a child process and SIGKILLs it once a given checkpoint exists: the machinery
//! of the kill-and-resume tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checkpoint::{self, Checkpoint, CheckpointState};
use super::runlog::{RunLog, StepRecord};
use crate::data::{Batch, Dataset, Loader, LoaderConfig, Position};
use crate::error::{Error, Result};
use crate::params::ParamStore;
use crate::util::Rng;

/// What one step reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepOutput {
    /// The loss terms by name (the first is the total, by convention).
    pub losses: Vec<(String, f32)>,
    pub lr: f32,
    pub grad_norm: Option<f32>,
    pub loss_scale: Option<f32>,
    /// The update was skipped because loss scaling found inf/NaN gradients: a non-finite loss is then expected.
    pub skipped: bool,
    /// Samples in the step's batch (for samples/s).
    pub samples: usize,
}

/// A trainer's whole state, as a checkpoint holds it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainState {
    pub params: ParamStore,
    pub optim: ParamStore,
    pub ema: Option<ParamStore>,
    pub loss_scale: Option<f32>,
    pub scalars: BTreeMap<String, serde_json::Value>,
}

/// The key under which a task keeps its [`super::trainer::TrainerState`] in [`TrainState::scalars`].
pub const TRAINER_STATE: &str = "trainer";

impl TrainState {
    /// `scalars` holding a trainer's state under [`TRAINER_STATE`].
    pub fn trainer_scalars(state: &super::trainer::TrainerState) -> Result<BTreeMap<String, serde_json::Value>> {
        let v = serde_json::to_value(state).map_err(|e| Error::Other(format!("trainer state: {e}")))?;
        Ok(BTreeMap::from([(TRAINER_STATE.to_string(), v)]))
    }

    /// The trainer's state saved by [`TrainState::trainer_scalars`]; an error names the scalar.
    pub fn trainer_state(&self) -> Result<super::trainer::TrainerState> {
        let v = self.scalars.get(TRAINER_STATE).cloned().ok_or_else(|| Error::Other(format!("scalar '{TRAINER_STATE}' missing")))?;
        serde_json::from_value(v).map_err(|e| Error::Other(format!("scalar '{TRAINER_STATE}': {e}")))
    }
}

/// The caller's side of the loop.
pub trait TrainTask {
    type Item;
    /// One optimiser step on `batch`. `step` is the number of steps done before this one (0 for the first);
    /// `rng` is the loop's generator (saved in checkpoints), for the step's own random draws (timesteps, noise).
    fn step(&mut self, step: u64, batch: Batch<Self::Item>, rng: &mut Rng) -> Result<StepOutput>;
    /// The state to checkpoint.
    fn save_state(&mut self) -> Result<TrainState>;
    /// Take back a state from a checkpoint.
    fn load_state(&mut self, state: TrainState) -> Result<()>;
}

#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// The run folder: `checkpoints/`, `metrics.jsonl`, the curves.
    pub run_dir: PathBuf,
    /// Total steps (a resumed run continues up to this count).
    pub steps: u64,
    /// Checkpoint every this many steps (and after the last step).
    pub save_every: u64,
    /// Checkpoints kept.
    pub keep: usize,
    /// Continue from the newest checkpoint of `run_dir` (a run folder without one starts afresh).
    pub resume: bool,
    /// Seeds the loop's generator (the data order and samples have the loader's seed).
    pub seed: u64,
    /// The run's configuration, stored in each checkpoint and compared on resume.
    pub config: serde_json::Value,
    /// Top-level config keys that may differ on resume (for example the total step count).
    pub may_differ: Vec<String>,
    /// Show a progress bar when stderr is a terminal.
    pub progress: bool,
}

/// How a run went.
#[derive(Clone, Debug, PartialEq)]
pub struct LoopReport {
    /// The step the run started from (0, or the checkpoint it resumed).
    pub resumed_from: u64,
    /// Steps completed in all (the total).
    pub steps: u64,
    pub last_checkpoint: Option<PathBuf>,
    /// The last step's record.
    pub last: Option<StepRecord>,
    /// Samples skipped by lenient loading over the whole run (resumed parts included).
    pub skipped_samples: u64,
}

/// Run `trainer` on batches of `dataset` for `cfg.steps` steps; see the module documentation.
pub fn train<D, T>(dataset: Arc<D>, loader: LoaderConfig, trainer: &mut T, cfg: &LoopConfig) -> Result<LoopReport>
where
    D: Dataset + 'static,
    T: TrainTask<Item = D::Item>,
{
    if cfg.save_every == 0 {
        return Err(Error::Mismatch { what: "training loop".into(), msg: "save_every must be at least 1".into() });
    }
    let existing = checkpoint::latest(&cfg.run_dir)?;
    let mut rng = Rng::new(cfg.seed ^ 0x7452_4149_4E4C_4F4F);
    let (mut step, mut position, mut last_checkpoint, mut skipped) = (0u64, Position::default(), None, 0u64);
    match (&existing, cfg.resume) {
        (Some(dir), false) => {
            return Err(Error::Other(format!(
                "{} already holds checkpoints (the newest is {}): resume it, or choose another run folder",
                cfg.run_dir.display(), dir.display()
            )));
        }
        (Some(dir), true) => {
            let ck = Checkpoint::load(dir)?;
            let may: Vec<&str> = cfg.may_differ.iter().map(|s| s.as_str()).collect();
            checkpoint::check_config(&ck.state.config, &cfg.config, &may)
                .map_err(|e| Error::Other(format!("{}: {e}", dir.join(checkpoint::STATE_FILE).display())))?;
            let s = ck.state;
            trainer.load_state(TrainState { params: ck.params, optim: ck.optim, ema: ck.ema, loss_scale: s.loss_scale, scalars: s.scalars })
                .map_err(|e| Error::Other(format!("resuming from {}: {e}", dir.display())))?;
            (step, position, rng, skipped) = (s.step, s.position, Rng::from_state(s.rng), s.skipped_samples);
            last_checkpoint = Some(dir.clone());
        }
        (None, _) => {}
    }
    let resumed_from = step;
    let mut log = RunLog::open(&cfg.run_dir, step, cfg.steps, cfg.progress)?;
    if let Some(dir) = &last_checkpoint {
        log.note(&format!("resuming at step {step} from {}", dir.display()));
    }
    let mut loader = Loader::new(dataset, loader, position)?;
    let (mut last, mut reported) = (None, 0);
    while step < cfg.steps {
        let t0 = Instant::now();
        let batch = loader.next_batch().map_err(|e| Error::Other(format!("step {}: {e}", step + 1)))?;
        for msg in &loader.skipped()[reported..] {
            log.note(&format!("step {}: skipped {msg}", step + 1));
        }
        skipped += (loader.skipped().len() - reported) as u64;
        reported = loader.skipped().len();
        let out = trainer.step(step, batch, &mut rng).map_err(|e| Error::Other(format!("step {}: {e}", step + 1)))?;
        step += 1;
        position = loader.position();
        let secs = t0.elapsed().as_secs_f32().max(1e-9);
        let record = StepRecord {
            step,
            losses: out.losses.iter().map(|(k, v)| (k.clone(), v.is_finite().then_some(*v))).collect(),
            lr: out.lr,
            grad_norm: out.grad_norm,
            loss_scale: out.loss_scale,
            samples_per_s: out.samples as f32 / secs,
            skipped: out.skipped,
        };
        log.log_step(record.clone())?;
        last = Some(record);
        if !out.skipped {
            if let Some((name, v)) = out.losses.iter().find(|(_, v)| !v.is_finite()) {
                let kept = match &last_checkpoint {
                    Some(d) => format!("the last good checkpoint is {}", d.display()),
                    None => "no checkpoint was written yet".into(),
                };
                return Err(Error::Other(format!(
                    "step {step}: loss '{name}' is {v} and the step was not skipped by loss scaling; stopping ({kept})"
                )));
            }
        }
        if step % cfg.save_every == 0 || step == cfg.steps {
            let st = trainer.save_state().map_err(|e| Error::Other(format!("step {step}: saving the trainer's state: {e}")))?;
            let state = CheckpointState {
                step,
                position,
                rng: rng.state(),
                config: cfg.config.clone(),
                version: checkpoint::VERSION.to_string(),
                loss_scale: st.loss_scale,
                ema: st.ema.is_some(),
                scalars: st.scalars,
                skipped_samples: skipped,
            };
            let ck = Checkpoint { params: st.params, optim: st.optim, ema: st.ema, state };
            let dir = ck.save(&cfg.run_dir, cfg.keep)?;
            log.saved(step, &dir)?;
            last_checkpoint = Some(dir);
        }
    }
    log.finish();
    if skipped > 0 {
        log.note(&format!("{skipped} samples were skipped (lenient loading)"));
    }
    Ok(LoopReport { resumed_from, steps: step, last_checkpoint, last, skipped_samples: skipped })
}

/// Spawn `cmd` and SIGKILL it as soon as checkpoint `step` of `run_dir` is complete. Returns `true` when it
/// was killed, `false` when it exited first (on its own), and an error when neither happened within `timeout`
/// (the child is then killed too).
pub fn kill_at_checkpoint(cmd: &mut Command, run_dir: &Path, step: u64, timeout: Duration) -> Result<bool> {
    let marker = checkpoint::checkpoint_dir(run_dir, step).join(checkpoint::STATE_FILE);
    let mut child = cmd.spawn().map_err(|e| Error::Other(format!("cannot start {cmd:?}: {e}")))?;
    let t0 = Instant::now();
    loop {
        if marker.exists() {
            // std's Child::kill sends SIGKILL on Unix: no handler runs, nothing is flushed.
            child.kill().map_err(|e| Error::Other(format!("kill: {e}")))?;
            let status = child.wait().map_err(|e| Error::Other(format!("wait: {e}")))?;
            return Ok(!status.success());
        }
        if let Some(status) = child.try_wait().map_err(|e| Error::Other(format!("wait: {e}")))? {
            if !status.success() {
                return Err(Error::Other(format!("the child process failed before checkpoint {step}: {status}")));
            }
            return Ok(false);
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Other(format!("no checkpoint {step} in {} within {timeout:?}", run_dir.display())));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
