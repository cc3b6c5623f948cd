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
        Ok(Executor { backend, graph, plan, mems, params, opt: None })
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

    /// Run the graph with `inputs` fed by name. Every needed input must be given with its declared shape and
    /// dtype; unknown names are errors.
    pub fn run(&mut self, inputs: &[(&str, &HostTensor)]) -> Result<()> {
        let mut feed: HashMap<&str, &HostTensor> = HashMap::new();
        for (name, t) in inputs {
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
            feed.insert(name, t);
        }
        for i in 0..self.graph.len() {
            let id = NodeId(i);
            let Some(buf) = self.plan.buffers[i] else { continue };
            let node = self.graph.node(id);
            let out = Loc { space: Space::Arena, offset: buf.offset, bytes: buf.bytes };
            match &node.op {
                Op::Param { .. } => {}
                Op::Input { name } => {
                    let t = feed.get(name.as_str()).ok_or_else(|| Error::Mismatch {
                        what: format!("input '{name}'"),
                        msg: format!("not given (wants {} {:?})", node.dtype, node.shape),
                    })?;
                    self.backend.write(&mut self.mems.arena, out.offset, &t.data)?;
                }
                _ => {
                    let ins = node.inputs.iter().map(|x| self.loc(*x)).collect::<Result<Vec<_>>>()?;
                    let inplace = buf.inplace_of.and_then(|d| node.inputs.iter().position(|x| *x == d));
                    self.backend.exec(&self.graph, id, &ins, out, inplace, &mut self.mems)?;
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

    /// Read a node's value after [`run`](Self::run): a graph output, an input, or a parameter.
    pub fn get(&self, id: NodeId) -> Result<HostTensor> {
        let n = self.graph.node(id);
        let live = matches!(n.op, Op::Param { .. })
            || self.graph.outputs().contains(&id)
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

/// AdamW state in and out, for checkpoints (`runtime/checkpoint.rs`): per parameter `NAME.exp_avg` and
/// `NAME.exp_avg_sq` (f32), and `NAME.master` (the f32 master copy) for a parameter stored in f16/bf16.
impl<B: Backend> Executor<B> {
    /// The optimiser's step count and moments; `None` before the first [`adamw_step`](Self::adamw_step).
    pub fn adamw_state(&self) -> Result<Option<(u32, ParamStore)>> {
        let Some(opt) = &self.opt else { return Ok(None) };
        let mut store = ParamStore::new();
        for (name, _, slot) in &opt.slots {
            let mut parts = vec![("exp_avg", slot.m), ("exp_avg_sq", slot.v)];
            parts.extend(slot.master.map(|l| ("master", l)));
            for (part, loc) in parts {
                let mut t = HostTensor::zeros(&self.params[name].shape, DType::F32);
                self.backend.read(&self.mems.state, loc.offset, &mut t.data)?;
                store.insert(&format!("{name}.{part}"), t);
            }
        }
        Ok(Some((opt.step, store)))
    }

    /// Restore a state saved by [`adamw_state`](Self::adamw_state) for the same parameter/gradient list; every
    /// tensor is checked by name, shape and dtype.
    pub fn set_adamw_state(&mut self, grads: &[(String, NodeId)], step: u32, state: &ParamStore) -> Result<()> {
        if self.opt.is_none() {
            self.opt = Some(self.init_opt(grads)?);
        }
        let Some(opt) = self.opt.as_mut() else { return Err(Error::Plan("optimiser state missing".into())) };
        if opt.slots.len() != grads.len() || opt.slots.iter().zip(grads).any(|(s, g)| s.0 != g.0 || s.1 != g.1) {
            return Err(Error::Mismatch { what: "set_adamw_state".into(), msg: "the parameter/gradient list differs from the first step's".into() });
        }
        for (name, _, slot) in &opt.slots {
            let shape = &self.params[name].shape;
            let mut parts = vec![("exp_avg", slot.m), ("exp_avg_sq", slot.v)];
            parts.extend(slot.master.map(|l| ("master", l)));
            for (part, loc) in parts {
                let t = state.require(&format!("{name}.{part}"), shape, DType::F32)?;
                self.backend.write(&mut self.mems.state, loc.offset, &t.data)?;
            }
        }
        opt.step = step;
        Ok(())
    }
}
