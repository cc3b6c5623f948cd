//! The executor: runs a planned graph on a backend. It owns the activation arena; the parameters and the
//! optimiser state live in [`DeviceParams`], which several executors can share. An executor borrows those two
//! regions for the length of a run ([`Executor::attach`] / [`Executor::detach`]).

use std::collections::HashMap;

use super::params::{DeviceParams, ParamSlot};
use super::trainer::{Trainer, TrainerState};
use crate::backend::{Backend, Loc, Mems, Space};
use crate::error::{Error, Result};
use crate::graph::plan::Plan;
use crate::graph::{Graph, NodeId, Op};
use crate::optim::{AdamWConfig, Algorithm, TrainConfig};
use crate::params::ParamStore;
use crate::tensor::{DType, HostTensor};

pub struct Executor<B: Backend> {
    backend: B,
    graph: Graph,
    plan: Plan,
    /// The arena; `params` and `state` are empty stand-ins except while attached (then the shared regions).
    mems: Mems<B::Mem>,
    dev: DeviceParams<B>,
    /// The parameters this graph uses.
    params: HashMap<String, ParamSlot>,
    /// The stand-ins for `mems.params` / `mems.state` while the shared regions are attached.
    spare: Option<(B::Mem, B::Mem)>,
    /// The optimiser behind [`Executor::adamw_step`] (the old one-executor API).
    trainer: Option<Box<Trainer<B>>>,
    /// What each position of `plan.order` does, resolved once from the graph, the plan and the parameter
    /// slots (so a run does no lookups by name and allocates nothing per node).
    steps: Vec<Step>,
    /// The input locations of every `Step::Exec`, one after another (`Step::Exec::ins` indexes into it).
    step_ins: Vec<Loc>,
    /// The stage `run_stage` accepts next (besides 0, which starts a new pass).
    next_stage: usize,
    /// The last stage that ran to completion in the current pass (its stage outputs are readable).
    done_stage: Option<usize>,
}

/// One position of the plan's order, as the executor runs it.
enum Step {
    /// A parameter (already in its region) or a node no output needs.
    Nothing,
    /// An input, written from the fed tensor at `offset` of the arena.
    Input { id: NodeId, offset: usize },
    /// A node the backend computes; its inputs are `step_ins[ins]`.
    Exec { id: NodeId, ins: std::ops::Range<usize>, out: Loc, ws: Loc, inplace: Option<usize> },
}

/// The activation arena must fit in what the backend has left (checked before allocating).
fn check_memory<B: Backend>(backend: &B, arena: usize) -> Result<()> {
    let available = backend.memory_available()?;
    if arena as u128 > available as u128 {
        let detail = format!("{arena} for activations on {}", backend.name());
        return Err(Error::Memory { what: String::new(), needed: arena as u128, available, detail });
    }
    Ok(())
}

/// The parameters `graph` needs (name, shape, dtype), in node order.
fn used_params(graph: &Graph) -> Vec<(String, Vec<usize>, DType)> {
    let need = crate::graph::plan::needed(graph);
    (graph.params().into_iter())
        .filter(|(id, _)| need[id.0])
        .map(|(id, n)| (n.to_string(), graph.node(id).shape.clone(), graph.node(id).dtype))
        .collect()
}

impl<B: Backend> Executor<B> {
    /// Plan `graph` and upload the parameters it uses from `store` (checking every name, shape and dtype).
    pub fn new(backend: B, graph: Graph, store: &ParamStore) -> Result<Self> {
        let plan = Plan::new(&graph);
        Self::with_plan(backend, graph, plan, store)
    }

    /// As [`new`](Self::new) with a given plan; the parameters get device memory of their own.
    pub fn with_plan(backend: B, graph: Graph, plan: Plan, store: &ParamStore) -> Result<Self> {
        let dev = DeviceParams::upload_checked(backend.clone(), store, &used_params(&graph))?;
        Self::with_params(graph, plan, &dev)
    }

    /// An executor that runs on shared device parameters: every parameter the graph uses must be in `dev`
    /// with the graph's shape and dtype. Updates through any executor on `dev` are seen by all of them.
    pub fn with_params(graph: Graph, plan: Plan, dev: &DeviceParams<B>) -> Result<Self> {
        let mut params = HashMap::new();
        for (name, shape, dtype) in used_params(&graph) {
            let slot = dev.slot(&name)?;
            if slot.shape != shape || slot.dtype != dtype {
                return Err(Error::Mismatch {
                    what: format!("parameter '{name}'"),
                    msg: format!("graph wants {dtype} {shape:?}, device holds {} {:?}", slot.dtype, slot.shape),
                });
            }
            params.insert(name, slot);
        }
        let backend = dev.backend().clone();
        check_memory(&backend, plan.arena_bytes)?;
        let mems = Mems { arena: backend.alloc(plan.arena_bytes)?, params: backend.alloc(0)?, state: backend.alloc(0)? };
        let mut ex = Executor {
            backend,
            graph,
            plan,
            mems,
            dev: dev.clone(),
            params,
            spare: None,
            trainer: None,
            steps: Vec::new(),
            step_ins: Vec::new(),
            next_stage: 0,
            done_stage: None,
        };
        ex.resolve_steps()?;
        Ok(ex)
    }

    /// Fill `steps` and `step_ins` from the graph, the plan and the parameter slots.
    fn resolve_steps(&mut self) -> Result<()> {
        let mut steps = Vec::with_capacity(self.plan.order.len());
        let mut step_ins = Vec::new();
        for &id in &self.plan.order {
            let node = self.graph.node(id);
            let step = match (self.plan.buffers[id.0], &node.op) {
                (None, _) | (Some(_), Op::Param { .. }) => Step::Nothing,
                (Some(buf), Op::Input { .. }) => Step::Input { id, offset: buf.offset },
                (Some(buf), _) => {
                    let start = step_ins.len();
                    for &x in &node.inputs {
                        step_ins.push(self.loc(x)?);
                    }
                    let inplace = buf.inplace_of.and_then(|d| node.inputs.iter().position(|x| *x == d));
                    let (offset, bytes) = self.plan.workspace(id);
                    Step::Exec {
                        id,
                        ins: start..step_ins.len(),
                        out: Loc { space: Space::Arena, offset: buf.offset, bytes: buf.bytes },
                        ws: Loc { space: Space::Arena, offset, bytes },
                        inplace,
                    }
                }
            };
            steps.push(step);
        }
        self.steps = steps;
        self.step_ins = step_ins;
        Ok(())
    }

    /// The device parameters this executor runs on (a handle: clone it to build more executors on them).
    pub fn device_params(&self) -> &DeviceParams<B> {
        &self.dev
    }

    /// Borrow the shared parameter and state regions into `self.mems` (every backend call that touches
    /// parameters or optimiser state runs between `attach` and [`detach`](Self::detach)).
    pub(crate) fn attach(&mut self) -> Result<()> {
        let mut r = self.dev.regions_mut();
        let (Some(p), Some(s)) = (r.params.take(), r.state.take()) else {
            return Err(Error::Plan("device parameters are already borrowed by a running executor".into()));
        };
        let sp = std::mem::replace(&mut self.mems.params, p);
        let ss = std::mem::replace(&mut self.mems.state, s);
        self.spare = Some((sp, ss));
        Ok(())
    }

    /// Give the regions borrowed by [`attach`](Self::attach) back.
    pub(crate) fn detach(&mut self) {
        if let Some((sp, ss)) = self.spare.take() {
            let mut r = self.dev.regions_mut();
            r.params = Some(std::mem::replace(&mut self.mems.params, sp));
            r.state = Some(std::mem::replace(&mut self.mems.state, ss));
        }
    }

    /// Run `f` on the backend with the arena, parameters and optimiser state attached.
    pub(crate) fn with_mems<R>(&mut self, f: impl FnOnce(&B, &Graph, &Plan, &mut Mems<B::Mem>) -> Result<R>) -> Result<R> {
        self.attach()?;
        let r = f(&self.backend, &self.graph, &self.plan, &mut self.mems);
        self.detach();
        r
    }

    /// Where a gradient (or any node marked as an output) lives, checked to be live after the run.
    pub(crate) fn output_loc(&self, id: NodeId) -> Result<Loc> {
        if self.plan.buffers.get(id.0).copied().flatten().is_none_or(|b| b.last != usize::MAX) {
            let n = self.graph.node(id);
            return Err(Error::Mismatch {
                what: format!("node {} ({})", id.0, n.op.describe()),
                msg: "is not a graph output; use autodiff::param_grads or Graph::mark_output".into(),
            });
        }
        self.loc(id)
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn loc(&self, id: NodeId) -> Result<Loc> {
        let n = self.graph.node(id);
        if let Op::Param { name } = &n.op {
            return self.params.get(name).map(|p| p.loc).ok_or_else(|| Error::Plan(format!("param '{name}' not uploaded")));
        }
        match self.plan.buffers.get(id.0).copied().flatten() {
            Some(b) => Ok(Loc { space: Space::Arena, offset: b.offset, bytes: b.bytes }),
            None => Err(Error::Plan(format!("node {} ({}) has no buffer", id.0, n.op.describe()))),
        }
    }

    /// Run the graph (every stage, in order) with `inputs` fed by name. Every needed input must be given with
    /// its declared shape and dtype; unknown names are errors.
    pub fn run(&mut self, inputs: &[(&str, &HostTensor)]) -> Result<()> {
        let feed = self.check_feed(inputs, None)?;
        self.next_stage = 0;
        self.done_stage = None;
        self.attach()?;
        let r = self.exec_steps(0, self.plan.order.len(), &feed);
        self.detach();
        r?;
        self.done_stage = Some(self.plan.num_stages() - 1);
        Ok(())
    }

    /// Run stage `k` of a staged graph with the inputs of that stage (see `Graph::input_stage`). Stages run
    /// in order, 0 starting a new pass; after stage `k`, its stage outputs can be read with
    /// [`get`](Self::get) until the next stage runs. Earlier stages' values that later stages read stay in
    /// the arena (the plan keeps them alive across the boundary), so nothing is recomputed.
    pub fn run_stage(&mut self, k: usize, inputs: &[(&str, &HostTensor)]) -> Result<()> {
        let stages = self.plan.num_stages();
        if k >= stages {
            return Err(Error::Plan(format!("stage {k} does not exist: the graph has {stages} stage(s)")));
        }
        if k != 0 && k != self.next_stage {
            return Err(Error::Plan(format!(
                "stage {k} run out of order: the next stage is {} (stage 0 starts a new pass)",
                self.next_stage
            )));
        }
        let feed = self.check_feed(inputs, Some(k))?;
        self.next_stage = 0;
        self.done_stage = None;
        let (from, to) = (self.plan.stage_starts[k], self.plan.stage_starts[k + 1]);
        self.attach()?;
        let r = self.exec_steps(from, to, &feed);
        self.detach();
        r?;
        self.done_stage = Some(k);
        self.next_stage = (k + 1) % stages;
        Ok(())
    }

    /// Check the fed tensors against the graph's inputs (and their stage, for a staged run).
    fn check_feed<'t>(
        &self,
        inputs: &[(&'t str, &'t HostTensor)],
        stage: Option<usize>,
    ) -> Result<HashMap<&'t str, &'t HostTensor>> {
        let mut feed = HashMap::new();
        for &(name, t) in inputs {
            let Some(id) = self.graph.find_input(name) else {
                return Err(Error::Mismatch { what: format!("input '{name}'"), msg: "the graph has no such input".into() });
            };
            let n = self.graph.node(id);
            if t.shape != n.shape || t.dtype != n.dtype {
                return Err(Error::Mismatch {
                    what: format!("input '{name}'"),
                    msg: format!("graph wants {} {:?}, got {} {:?}", n.dtype, n.shape, t.dtype, t.shape),
                });
            }
            if let Some(k) = stage.filter(|&k| k != self.graph.stage(id)) {
                return Err(Error::Mismatch {
                    what: format!("input '{name}'"),
                    msg: format!("belongs to stage {}, not to stage {k}", self.graph.stage(id)),
                });
            }
            feed.insert(name, t);
        }
        Ok(feed)
    }

    /// Execute the planned nodes at positions `from..to` of the plan's order.
    fn exec_steps(&mut self, from: usize, to: usize, feed: &HashMap<&str, &HostTensor>) -> Result<()> {
        for step in &self.steps[from..to] {
            match step {
                Step::Nothing => {}
                Step::Input { id, offset } => {
                    let node = self.graph.node(*id);
                    let Op::Input { name } = &node.op else { unreachable!("an input step holds an input node") };
                    let t = feed.get(name.as_str()).ok_or_else(|| Error::Mismatch {
                        what: format!("input '{name}'"),
                        msg: format!("not given (wants {} {:?}, stage {})", node.dtype, node.shape, self.graph.stage(*id)),
                    })?;
                    self.backend.write(&mut self.mems.arena, *offset, &t.data)?;
                }
                Step::Exec { id, ins, out, ws, inplace } => {
                    let ins = &self.step_ins[ins.clone()];
                    self.backend.exec(&self.graph, *id, ins, *out, *ws, *inplace, &mut self.mems)?;
                }
            }
        }
        Ok(())
    }

    /// Fill the activation arena with 0xFF bytes (NaN in every float format), so that an element a kernel
    /// fails to write shows up in the results.
    pub fn poison_arena(&mut self) -> Result<()> {
        let poison = vec![0xFFu8; self.plan.arena_bytes];
        self.backend.write(&mut self.mems.arena, 0, &poison)
    }

    /// Read a node's value after [`run`](Self::run): a graph output or a parameter; or a stage output after
    /// its stage ran and before the next stage runs.
    pub fn get(&self, id: NodeId) -> Result<HostTensor> {
        let n = self.graph.node(id);
        if self.graph.stage_outputs().contains(&id) && !self.graph.outputs().contains(&id) {
            let k = self.graph.stage(id);
            if self.done_stage != Some(k) {
                return Err(Error::Mismatch {
                    what: format!("node {} ({})", id.0, n.op.describe()),
                    msg: format!("is an output of stage {k}: read it after run_stage({k}) and before the next stage"),
                });
            }
        }
        let live = matches!(n.op, Op::Param { .. })
            || self.graph.outputs().contains(&id)
            || self.graph.stage_outputs().contains(&id)
            || self.plan.buffers[id.0].is_some_and(|b| b.last == usize::MAX);
        if !live {
            return Err(Error::Mismatch {
                what: format!("node {} ({})", id.0, n.op.describe()),
                msg: "is not a graph output: its memory is reused; mark it with Graph::mark_output".into(),
            });
        }
        let loc = self.loc(id)?;
        let mut t = HostTensor::zeros(&n.shape, n.dtype);
        match loc.space {
            Space::Arena => self.backend.read(&self.mems.arena, loc.offset, &mut t.data)?,
            _ => self.dev.read_loc(loc, &mut t.data)?,
        }
        Ok(t)
    }

    /// The current value of a parameter.
    pub fn param(&self, name: &str) -> Result<HostTensor> {
        let p = self.params.get(name).ok_or_else(|| Error::Mismatch {
            what: format!("parameter '{name}'"),
            msg: "not used by this graph".into(),
        })?;
        let mut t = HostTensor::zeros(&p.shape, p.dtype);
        self.dev.read_loc(p.loc, &mut t.data)?;
        Ok(t)
    }

    /// Every parameter the graph uses, read back (for saving after training).
    pub fn params(&self) -> Result<ParamStore> {
        let mut s = ParamStore::new();
        for name in self.params.keys() {
            s.insert(name, self.param(name)?);
        }
        Ok(s)
    }

    /// One AdamW step on the named parameters with gradients from the graph (nodes marked as outputs, e.g.
    /// by `autodiff::param_grads`). When `max_norm` is given, gradients are scaled so their global L2 norm is
    /// at most `max_norm` (as `torch.nn.utils.clip_grad_norm_`). Returns the global gradient norm.
    ///
    /// A shorthand for a [`Trainer`] kept by this executor (created at the first call on the gradients'
    /// parameters, one group with the first call's weight decay: later calls may change the other fields of
    /// `cfg`); use a `Trainer` for anything more.
    pub fn adamw_step(&mut self, grads: &[(String, NodeId)], cfg: &AdamWConfig, max_norm: Option<f32>) -> Result<f32> {
        let mut trainer = match self.trainer.take() {
            Some(t) => t,
            None => self.new_trainer(grads, cfg)?,
        };
        trainer.config_mut().algorithm = Algorithm::AdamW(*cfg);
        trainer.config_mut().max_grad_norm = max_norm;
        let r = trainer.step(self, grads, cfg.lr);
        self.trainer = Some(trainer);
        Ok(r?.grad_norm)
    }

    fn new_trainer(&self, grads: &[(String, NodeId)], cfg: &AdamWConfig) -> Result<Box<Trainer<B>>> {
        let names: Vec<String> = grads.iter().map(|g| g.0.clone()).collect();
        let tc = TrainConfig { algorithm: Algorithm::AdamW(*cfg), ..TrainConfig::default() };
        Ok(Box::new(Trainer::new(&self.dev, &names, tc, |_, _| crate::optim::ParamGroup::default_for(cfg.weight_decay))?))
    }

    /// The state of the trainer behind [`adamw_step`](Self::adamw_step) (`Trainer::export_state`), for
    /// checkpoints; `None` before the first step.
    pub fn adamw_state(&self) -> Result<Option<(ParamStore, TrainerState)>> {
        self.trainer.as_ref().map(|t| t.export_state()).transpose()
    }

    /// Restore a state saved by [`adamw_state`](Self::adamw_state) for the same parameters (every tensor is
    /// checked by name and shape; see `Trainer::load_state`).
    pub fn set_adamw_state(&mut self, grads: &[(String, NodeId)], cfg: &AdamWConfig, tensors: &ParamStore, state: &TrainerState) -> Result<()> {
        let mut trainer = match self.trainer.take() {
            Some(t) => t,
            None => self.new_trainer(grads, cfg)?,
        };
        let r = trainer.load_state(tensors, state);
        self.trainer = Some(trainer);
        r
    }
}
