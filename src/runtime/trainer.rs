//! The trainer: optimiser state for a set of trainable parameters on [`DeviceParams`], and the step that
//! applies gradients from any executor built on those parameters.
//!
//! One step: (optionally) add the last micro-batch's gradients to the f32 accumulators; the squared global
//! gradient norm on the device (one f64 read back); a non-finite norm skips the step and backs the loss scale
//! off (as PyTorch's GradScaler); else the gradients are unscaled (loss scale, micro-batch count) and clipped
//! through one multiplier that the update kernel applies, each parameter is updated with its group's learning
//! rate and weight decay (f32 master weights for f16/bf16 parameters), and the f32 EMA of the weights follows.
//!
//! The state region of the [`DeviceParams`] belongs to the trainer (one trainer per `DeviceParams`). Its
//! content can be exported as a [`ParamStore`] plus [`TrainerState`] and loaded back (checkpoints).

use serde::{Deserialize, Serialize};

use super::executor::Executor;
use super::params::{place, DeviceParams};
use crate::backend::{AdamWSlot, Backend, Loc, SgdSlot, Space};
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId};
use crate::optim::{Algorithm, ParamGroup, TrainConfig};
use crate::params::ParamStore;
use crate::tensor::{DType, HostTensor};

/// What one [`Trainer::step`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The global L2 norm of the (unscaled, averaged, unclipped) gradients; inf or NaN on a skipped step.
    pub grad_norm: f32,
    /// The step was skipped (gradients held inf/NaN): no parameter, moment or EMA changed.
    pub skipped: bool,
    /// The loss scale the step's gradients were computed with.
    pub loss_scale: f32,
    /// Updates applied so far (skipped steps not counted).
    pub step: u64,
}

/// The trainer's scalars (saved beside the tensors of [`Trainer::export_state`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// `adamw` or `sgd`.
    pub algorithm: String,
    /// Updates applied (AdamW's bias correction uses it).
    pub step: u64,
    /// Steps skipped for inf/NaN gradients.
    pub skipped_steps: u64,
    pub loss_scale: f32,
    /// Good steps in a row since the loss scale last changed.
    pub good_steps: u32,
}

/// One trainable parameter and its state locations.
struct Slot {
    name: String,
    shape: Vec<usize>,
    numel: usize,
    param: Loc,
    dtype: DType,
    group: ParamGroup,
    master: Option<Loc>,
    /// AdamW's first moment or SGD's momentum buffer.
    m: Option<Loc>,
    /// AdamW's second moment.
    v: Option<Loc>,
    ema: Option<Loc>,
    acc: Option<Loc>,
}

pub struct Trainer<B: Backend> {
    dev: DeviceParams<B>,
    cfg: TrainConfig,
    slots: Vec<Slot>,
    scratch: Option<Loc>,
    state: TrainerState,
    /// Micro-batches accumulated since the last step.
    pending: u32,
}

/// The input [`scaled_loss`] adds.
pub const LOSS_SCALE_INPUT: &str = "loss_scale";

/// `loss` (cast to f32) times an f32 input named [`LOSS_SCALE_INPUT`] of the loss's shape: differentiate this
/// for loss scaling and feed [`Trainer::loss_scale_input`] each step.
pub fn scaled_loss(g: &mut Graph, loss: NodeId) -> Result<NodeId> {
    let shape = g.shape(loss).to_vec();
    let l = if g.dtype(loss) == DType::F32 { loss } else { g.cast(loss, DType::F32)? };
    let s = g.input(LOSS_SCALE_INPUT, &shape, DType::F32)?;
    g.mul(l, s)
}

impl<B: Backend> Trainer<B> {
    /// A trainer for the parameters named in `trainable` (every other parameter stays frozen), each in the
    /// group `group(name, shape)` gives. Allocates and initialises the optimiser state on `dev` (zero moments;
    /// master weights and EMA from the current parameters), replacing any state region `dev` had.
    pub fn new(
        dev: &DeviceParams<B>,
        trainable: &[String],
        cfg: TrainConfig,
        group: impl Fn(&str, &[usize]) -> ParamGroup,
    ) -> Result<Self> {
        let algo = cfg.algorithm;
        let mut sizes = Vec::new();
        let mut pending = Vec::new();
        for name in trainable {
            let p = dev.slot(name)?;
            if !p.dtype.is_float() {
                return Err(Error::Mismatch { what: format!("parameter '{name}'"), msg: format!("is {}, not trainable", p.dtype) });
            }
            if pending.iter().any(|(n, _): &(String, _)| n == name) {
                return Err(Error::Mismatch { what: format!("parameter '{name}'"), msg: "listed twice as trainable".into() });
            }
            let f = p.numel() * 4;
            let want = [
                p.dtype != DType::F32,
                matches!(algo, Algorithm::AdamW(_)) || matches!(algo, Algorithm::Sgd(c) if c.momentum != 0.0),
                matches!(algo, Algorithm::AdamW(_)),
                cfg.ema_decay.is_some(),
                cfg.accumulation,
            ];
            let first = sizes.len();
            for w in want {
                sizes.push(if w { f } else { 0 });
            }
            pending.push((name.clone(), (p, first, want)));
        }
        let numels: Vec<usize> = pending.iter().map(|(_, (p, _, _))| p.numel()).collect();
        let scratch_bytes = dev.backend().sum_squares_scratch(&numels);
        sizes.push(scratch_bytes);
        let (offs, total) = place(&sizes);
        dev.alloc_state(total)?;
        let at = |k: usize, on: bool| on.then(|| Loc { space: Space::State, offset: offs[k], bytes: sizes[k] });
        let mut slots = Vec::new();
        for (name, (p, first, want)) in pending {
            let slot = Slot {
                group: group(&name, &p.shape),
                name,
                numel: p.numel(),
                shape: p.shape.clone(),
                param: p.loc,
                dtype: p.dtype,
                master: at(first, want[0]),
                m: at(first + 1, want[1]),
                v: at(first + 2, want[2]),
                ema: at(first + 3, want[3]),
                acc: at(first + 4, want[4]),
            };
            let init = HostTensor::zeros(&slot.shape, slot.dtype);
            let mut w = init.clone();
            dev.read_loc(slot.param, &mut w.data)?;
            let w32 = w.cast(DType::F32);
            for l in [slot.master, slot.ema].into_iter().flatten() {
                dev.write_loc(l, &w32.data)?;
            }
            slots.push(slot);
        }
        let scratch = (scratch_bytes > 0).then(|| Loc { space: Space::State, offset: offs[sizes.len() - 1], bytes: scratch_bytes });
        let loss_scale = cfg.loss_scale.map_or(1.0, |c| c.init_scale);
        let state = TrainerState { algorithm: algo.name().into(), step: 0, skipped_steps: 0, loss_scale, good_steps: 0 };
        Ok(Trainer { dev: dev.clone(), cfg, slots, scratch, state, pending: 0 })
    }

    /// The parameters this trainer updates (and whose state region it owns).
    pub fn device_params(&self) -> &DeviceParams<B> {
        &self.dev
    }
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }
    /// The configuration may change between steps (learning-rate fields are unused: `step` takes the rate),
    /// except for what sized the state: the algorithm kind, EMA and accumulation.
    pub fn config_mut(&mut self) -> &mut TrainConfig {
        &mut self.cfg
    }
    pub fn state(&self) -> &TrainerState {
        &self.state
    }
    /// Updates applied so far.
    pub fn steps(&self) -> u64 {
        self.state.step
    }
    pub fn loss_scale(&self) -> f32 {
        self.state.loss_scale
    }
    /// The value to feed as [`LOSS_SCALE_INPUT`] (shape `shape`, the loss's).
    pub fn loss_scale_input(&self, shape: &[usize]) -> Result<HostTensor> {
        let n = shape.iter().product();
        HostTensor::from_f32(shape, DType::F32, &vec![self.state.loss_scale; n])
    }
    /// The trainable parameters' names, in order.
    pub fn trainable(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.name.clone()).collect()
    }

    /// The gradient locations in `ex`'s arena, in slot order, checked against the parameters.
    fn grad_locs(&self, ex: &Executor<B>, grads: &[(String, NodeId)]) -> Result<Vec<(Loc, DType)>> {
        if !ex.device_params().same(&self.dev) {
            return Err(Error::Mismatch {
                what: "trainer step".into(),
                msg: "the executor runs on other device parameters than the trainer's".into(),
            });
        }
        if let Some((n, _)) = grads.iter().find(|(n, _)| !self.slots.iter().any(|s| s.name == *n)) {
            return Err(Error::Mismatch { what: format!("gradient of '{n}'"), msg: "the parameter is not trainable here".into() });
        }
        let mut out = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let Some((_, id)) = grads.iter().find(|(n, _)| *n == s.name) else {
                return Err(Error::Mismatch { what: format!("gradient of '{}'", s.name), msg: "not given".into() });
            };
            let g = ex.graph().node(*id);
            if g.shape != s.shape || !g.dtype.is_float() {
                return Err(Error::Mismatch {
                    what: format!("gradient of '{}'", s.name),
                    msg: format!("{} {:?} does not fit parameter {} {:?}", g.dtype, g.shape, s.dtype, s.shape),
                });
            }
            out.push((ex.output_loc(*id)?, g.dtype));
        }
        Ok(out)
    }

    /// Add the gradients of the run `ex` just made to the f32 accumulators (gradient accumulation; needs
    /// `TrainConfig::accumulation`). The next [`step`](Self::step) adds its own gradients and averages.
    pub fn accumulate(&mut self, ex: &mut Executor<B>, grads: &[(String, NodeId)]) -> Result<()> {
        let locs = self.grad_locs(ex, grads)?;
        let first = self.pending == 0;
        let slots = &self.slots;
        ex.with_mems(|b, _, _, mems| {
            for (s, &(g, gd)) in slots.iter().zip(&locs) {
                let acc = s.acc.ok_or_else(|| Error::Plan("accumulate: TrainConfig::accumulation is off".into()))?;
                b.accumulate(acc, g, gd, s.numel, first, mems)?;
            }
            Ok(())
        })?;
        self.pending += 1;
        Ok(())
    }

    /// One optimiser step with the gradients of the run `ex` just made (plus any accumulated micro-batches,
    /// averaged) at learning rate `lr` (times each group's factor).
    pub fn step(&mut self, ex: &mut Executor<B>, grads: &[(String, NodeId)], lr: f32) -> Result<StepStats> {
        let locs = self.grad_locs(ex, grads)?;
        let micro = self.pending + 1;
        let (cfg, slots, scratch) = (self.cfg, &self.slots, self.scratch);
        let st = &mut self.state;
        let loss_scale = st.loss_scale;
        let stats = ex.with_mems(|b, _, _, mems| {
            let mut gl = locs.clone();
            if micro > 1 {
                for (k, (s, &(g, gd))) in slots.iter().zip(&locs).enumerate() {
                    let acc = s.acc.ok_or_else(|| Error::Plan("step: accumulators missing".into()))?;
                    b.accumulate(acc, g, gd, s.numel, false, mems)?;
                    gl[k] = (acc, DType::F32);
                }
            }
            let sq = b.sum_squares_many(&gl, scratch, mems)?;
            let unscale = 1.0 / (loss_scale as f64 * micro as f64);
            let norm = (sq.sqrt() * unscale) as f32;
            if !norm.is_finite() {
                st.skipped_steps += 1;
                st.good_steps = 0;
                if let Some(ls) = cfg.loss_scale {
                    st.loss_scale *= ls.backoff;
                }
                return Ok(StepStats { grad_norm: norm, skipped: true, loss_scale, step: st.step });
            }
            let clip = cfg.max_grad_norm.map_or(1.0, |m| (m as f64 / (norm as f64 + 1e-6)).min(1.0));
            let grad_scale = (unscale * clip) as f32;
            st.step += 1;
            for (s, &(g, gd)) in slots.iter().zip(&gl) {
                let algo = cfg.algorithm.with(lr * s.group.lr_factor, s.group.weight_decay);
                match algo {
                    Algorithm::AdamW(c) => {
                        let (Some(m), Some(v)) = (s.m, s.v) else {
                            return Err(Error::Plan("step: AdamW state missing (the trainer was made for SGD)".into()));
                        };
                        let slot = AdamWSlot {
                            numel: s.numel,
                            param: s.param,
                            param_dtype: s.dtype,
                            grad: g,
                            grad_dtype: gd,
                            m,
                            v,
                            master: s.master,
                        };
                        let t = u32::try_from(st.step).unwrap_or(u32::MAX);
                        b.adamw(&slot, &c, t, grad_scale, mems)?;
                    }
                    Algorithm::Sgd(c) => {
                        if c.momentum != 0.0 && s.m.is_none() {
                            return Err(Error::Plan("step: SGD momentum buffer missing".into()));
                        }
                        let slot = SgdSlot {
                            numel: s.numel,
                            param: s.param,
                            param_dtype: s.dtype,
                            grad: g,
                            grad_dtype: gd,
                            momentum: s.m,
                            master: s.master,
                        };
                        b.sgd(&slot, &c, st.step == 1, grad_scale, mems)?;
                    }
                }
                if let (Some(e), Some(decay)) = (s.ema, cfg.ema_decay) {
                    let (src, sd) = match s.master {
                        Some(w) => (w, DType::F32),
                        None => (s.param, s.dtype),
                    };
                    b.ema(e, src, sd, s.numel, decay, mems)?;
                }
            }
            if let Some(ls) = cfg.loss_scale {
                st.good_steps += 1;
                if st.good_steps >= ls.growth_interval {
                    st.loss_scale *= ls.growth;
                    st.good_steps = 0;
                }
            }
            Ok(StepStats { grad_norm: norm, skipped: false, loss_scale, step: st.step })
        });
        self.pending = 0;
        stats
    }

    fn read_f32(&self, loc: Loc, shape: &[usize]) -> Result<HostTensor> {
        let mut t = HostTensor::zeros(shape, DType::F32);
        self.dev.read_loc(loc, &mut t.data)?;
        Ok(t)
    }

    /// The EMA weights in f32, named as the parameters.
    pub fn ema_params_f32(&self) -> Result<ParamStore> {
        let mut out = ParamStore::new();
        for s in &self.slots {
            let e = s.ema.ok_or_else(|| Error::Other("no EMA: TrainConfig::ema_decay is not set".into()))?;
            out.insert(&s.name, self.read_f32(e, &s.shape)?);
        }
        Ok(out)
    }

    /// Every parameter of the device with the trainable ones replaced by their EMA (in the parameter's dtype):
    /// the model to save.
    pub fn ema_model(&self) -> Result<ParamStore> {
        let mut out = self.dev.download()?;
        let ema = self.ema_params_f32()?;
        for s in &self.slots {
            if let Some(t) = ema.get(&s.name) {
                out.insert(&s.name, t.cast(s.dtype));
            }
        }
        Ok(out)
    }

    /// The state tensors, each under `<kind>/<parameter>`: `master/`, `exp_avg/` and `exp_avg_sq/` (AdamW),
    /// `momentum_buffer/` (SGD), `ema/`, all f32.
    fn state_tensors(&self) -> Vec<(String, Loc, &Slot)> {
        let mut out = Vec::new();
        let (m_name, v_name) = match self.cfg.algorithm {
            Algorithm::AdamW(_) => ("exp_avg", "exp_avg_sq"),
            Algorithm::Sgd(_) => ("momentum_buffer", "unused"),
        };
        for s in &self.slots {
            for (kind, loc) in [("master", s.master), (m_name, s.m), (v_name, s.v), ("ema", s.ema)] {
                if let Some(l) = loc {
                    out.push((format!("{kind}/{}", s.name), l, s));
                }
            }
        }
        out
    }

    /// The optimiser state for a checkpoint: the tensors (see `state_tensors`) and the scalars. Fails between
    /// micro-batches (the accumulators are not saved).
    pub fn export_state(&self) -> Result<(ParamStore, TrainerState)> {
        if self.pending > 0 {
            return Err(Error::Other(format!("cannot save optimiser state with {} micro-batches accumulated", self.pending)));
        }
        let mut out = ParamStore::new();
        for (name, loc, s) in self.state_tensors() {
            out.insert(&name, self.read_f32(loc, &s.shape)?);
        }
        Ok((out, self.state.clone()))
    }

    /// Load what [`export_state`](Self::export_state) gave (every tensor this trainer keeps must be there, f32
    /// with its parameter's shape; extra tensors are errors too). The parameters themselves are loaded
    /// separately ([`DeviceParams::set`]).
    pub fn load_state(&mut self, tensors: &ParamStore, state: &TrainerState) -> Result<()> {
        if state.algorithm != self.cfg.algorithm.name() {
            return Err(Error::Mismatch {
                what: "optimiser state".into(),
                msg: format!("was saved by {}, this trainer runs {}", state.algorithm, self.cfg.algorithm.name()),
            });
        }
        let expected = self.state_tensors();
        for (name, loc, s) in &expected {
            let t = tensors.require(name, &s.shape, DType::F32)?;
            self.dev.write_loc(*loc, &t.data)?;
        }
        if let Some((extra, _)) = tensors.iter().find(|(n, _)| !expected.iter().any(|e| e.0 == *n)) {
            return Err(Error::Mismatch {
                what: format!("optimiser state tensor '{extra}'"),
                msg: "this trainer keeps no such tensor (other trainable parameters or settings?)".into(),
            });
        }
        self.state = state.clone();
        self.pending = 0;
        Ok(())
    }
}
