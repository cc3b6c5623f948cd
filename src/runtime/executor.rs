//! The executor: runs a planned graph on a backend. It owns the three memory regions (activation arena,
//! parameters, optimiser state), feeds inputs at the step that defines them, and reads outputs back.

use std::collections::HashMap;

use crate::graph::plan::{Plan, ALIGN};
use crate::graph::{Graph, NodeId, Op};
use crate::backend::{AdamWSlot, Backend, Loc, Mems, Space};
use crate::error::{Error, Result};
use crate::optim::AdamWConfig;
use crate::params::ParamStore;
use crate::tensor::{DType, HostTensor};

struct ParamSlot {
    loc: Loc,
    shape: Vec<usize>,
    dtype: DType,
}

struct OptState {
    /// Parameter name, gradient node, and its update slot.
    slots: Vec<(String, NodeId, AdamWSlot)>,
    step: u32,
}

pub struct Executor<B: Backend> {
    backend: B,
    graph: Graph,
    plan: Plan,
    mems: Mems<B::Mem>,
    params: HashMap<String, ParamSlot>,
    opt: Option<OptState>,
    /// The stage `run_stage` accepts next (besides 0, which starts a new pass).
    next_stage: usize,
    /// The last stage that ran to completion in the current pass (its stage outputs are readable).
    done_stage: Option<usize>,
}

fn place(sizes: &[usize]) -> (Vec<usize>, usize) {
    let mut offs = Vec::with_capacity(sizes.len());
    let mut end = 0;
    for s in sizes {
        offs.push(end);
        end += s.div_ceil(ALIGN).max(1) * ALIGN;
    }
    (offs, end)
}

/// Parameters and activation arena must fit in what the backend has left (checked before allocating).
fn check_memory<B: Backend>(backend: &B, params: usize, arena: usize) -> Result<()> {
    let needed = params as u128 + arena as u128;
    let available = backend.memory_available()?;
    if needed > available as u128 {
        let detail = format!("{params} for parameters + {arena} for activations on {}", backend.name());
        return Err(Error::Memory { what: String::new(), needed, available, detail });
    }
    Ok(())
}

impl<B: Backend> Executor<B> {
    /// Plan `graph` and upload the parameters it uses from `store` (checking every name, shape and dtype).
    pub fn new(backend: B, graph: Graph, store: &ParamStore) -> Result<Self> {
        let plan = Plan::new(&graph);
        Self::with_plan(backend, graph, plan, store)
    }

    pub fn with_plan(backend: B, graph: Graph, plan: Plan, store: &ParamStore) -> Result<Self> {
        let need = crate::graph::plan::needed(&graph);
        let used: Vec<(NodeId, String)> = (graph.params().into_iter())
            .filter(|(id, _)| need[id.0])
            .map(|(id, n)| (id, n.to_string()))
            .collect();
        let mut tensors = Vec::with_capacity(used.len());
        for (id, name) in &used {
            let n = graph.node(*id);
            tensors.push(store.require(name, &n.shape, n.dtype)?);
        }
        let (offs, total) = place(&tensors.iter().map(|t| t.data.len()).collect::<Vec<_>>());
        check_memory(&backend, total, plan.arena_bytes)?;
        let mut pmem = backend.alloc(total)?;
        let mut params = HashMap::new();
        for (((_, name), t), off) in used.iter().zip(&tensors).zip(offs) {
            backend.write(&mut pmem, off, &t.data)?;
            let loc = Loc { space: Space::Params, offset: off, bytes: t.data.len() };
            params.insert(name.clone(), ParamSlot { loc, shape: t.shape.clone(), dtype: t.dtype });
        }
        let mems = Mems { arena: backend.alloc(plan.arena_bytes)?, params: pmem, state: backend.alloc(0)? };
        Ok(Executor { backend, graph, plan, mems, params, opt: None, next_stage: 0, done_stage: None })
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
        self.exec_steps(0, self.plan.order.len(), &feed)?;
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
        self.exec_steps(from, to, &feed)?;
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
        for p in from..to {
            let id = self.plan.order[p];
            let Some(buf) = self.plan.buffers[id.0] else { continue };
            let node = self.graph.node(id);
            let out = Loc { space: Space::Arena, offset: buf.offset, bytes: buf.bytes };
            match &node.op {
                Op::Param { .. } => {}
                Op::Input { name } => {
                    let t = feed.get(name.as_str()).ok_or_else(|| Error::Mismatch {
                        what: format!("input '{name}'"),
                        msg: format!("not given (wants {} {:?}, stage {})", node.dtype, node.shape, self.graph.stage(id)),
                    })?;
                    self.backend.write(&mut self.mems.arena, out.offset, &t.data)?;
                }
                _ => {
                    let ins = node.inputs.iter().map(|x| self.loc(*x)).collect::<Result<Vec<_>>>()?;
                    let inplace = buf.inplace_of.and_then(|d| node.inputs.iter().position(|x| *x == d));
                    let (offset, bytes) = self.plan.workspace(id);
                    let ws = Loc { space: Space::Arena, offset, bytes };
                    self.backend.exec(&self.graph, id, &ins, out, ws, inplace, &mut self.mems)?;
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
        self.backend.read(self.mems.get(loc.space), loc.offset, &mut t.data)?;
        Ok(t)
    }

    /// The current value of a parameter.
    pub fn param(&self, name: &str) -> Result<HostTensor> {
        let p = self.params.get(name).ok_or_else(|| Error::Mismatch {
            what: format!("parameter '{name}'"),
            msg: "not used by this graph".into(),
        })?;
        let mut t = HostTensor::zeros(&p.shape, p.dtype);
        self.backend.read(&self.mems.params, p.loc.offset, &mut t.data)?;
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
    pub fn adamw_step(&mut self, grads: &[(String, NodeId)], cfg: &AdamWConfig, max_norm: Option<f32>) -> Result<f32> {
        if self.opt.is_none() {
            self.opt = Some(self.init_opt(grads)?);
        }
        let Some(opt) = self.opt.as_mut() else { return Err(Error::Plan("optimiser state missing".into())) };
        if opt.slots.len() != grads.len() || opt.slots.iter().zip(grads).any(|(s, g)| s.0 != g.0 || s.1 != g.1) {
            return Err(Error::Mismatch {
                what: "adamw_step".into(),
                msg: "the parameter/gradient list differs from the first step's".into(),
            });
        }
        let mut sq = 0.0f64;
        for (_, _, slot) in &opt.slots {
            sq += self.backend.sum_squares(slot.grad, slot.grad_dtype, &self.mems)?;
        }
        let norm = sq.sqrt() as f32;
        let scale = match max_norm {
            Some(m) => (m / (norm + 1e-6)).min(1.0),
            None => 1.0,
        };
        opt.step += 1;
        for (_, _, slot) in &opt.slots {
            self.backend.adamw(slot, cfg, opt.step, scale, &mut self.mems)?;
        }
        Ok(norm)
    }

    fn init_opt(&mut self, grads: &[(String, NodeId)]) -> Result<OptState> {
        let mut sizes = Vec::new();
        for (name, gid) in grads {
            let p = self.params.get(name).ok_or_else(|| Error::Mismatch {
                what: format!("parameter '{name}'"),
                msg: "not used by this graph".into(),
            })?;
            let g = self.graph.node(*gid);
            if g.shape != p.shape || !g.dtype.is_float() || !p.dtype.is_float() {
                return Err(Error::Mismatch {
                    what: format!("gradient of '{name}'"),
                    msg: format!("{} {:?} does not fit parameter {} {:?}", g.dtype, g.shape, p.dtype, p.shape),
                });
            }
            if !self.plan.buffers[gid.0].is_some_and(|b| b.last == usize::MAX) {
                return Err(Error::Mismatch {
                    what: format!("gradient of '{name}'"),
                    msg: "is not a graph output; use autodiff::param_grads or Graph::mark_output".into(),
                });
            }
            let n = g.numel() * 4;
            sizes.extend([n, n, if p.dtype == DType::F32 { 0 } else { n }]);
        }
        let (offs, total) = place(&sizes);
        let mut state = self.backend.alloc(total)?;
        let zeros = vec![0u8; sizes.iter().copied().max().unwrap_or(0)];
        let mut slots = Vec::new();
        for (k, (name, gid)) in grads.iter().enumerate() {
            let p = &self.params[name];
            let numel = p.shape.iter().product::<usize>();
            let at = |j: usize| Loc { space: Space::State, offset: offs[3 * k + j], bytes: sizes[3 * k + j] };
            self.backend.write(&mut state, at(0).offset, &zeros[..numel * 4])?;
            self.backend.write(&mut state, at(1).offset, &zeros[..numel * 4])?;
            let master = if p.dtype == DType::F32 {
                None
            } else {
                let mut t = HostTensor::zeros(&p.shape, p.dtype);
                self.backend.read(&self.mems.params, p.loc.offset, &mut t.data)?;
                self.backend.write(&mut state, at(2).offset, &t.cast(DType::F32).data)?;
                Some(at(2))
            };
            let slot = AdamWSlot {
                numel,
                param: p.loc,
                param_dtype: p.dtype,
                grad: self.loc(*gid)?,
                grad_dtype: self.graph.dtype(*gid),
                m: at(0),
                v: at(1),
                master,
            };
            slots.push((name.clone(), *gid, slot));
        }
        self.mems.state = state;
        Ok(OptState { slots, step: 0 })
    }
}
