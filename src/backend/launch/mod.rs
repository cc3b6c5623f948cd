//! Kernel launches: how each graph op maps onto the entry points of `kernels/*.cu`. The `cuda` backend and the
//! `emu` backend (the same `.cu` compiled for the CPU) both run these, so one launcher serves both.
//!
//! A launcher turns a node (its op, input/output shapes and dtypes, and where each tensor lives) into one or
//! more [`Launch`]es. Pointers stay symbolic ([`Arg::Ptr`] with a [`Loc`]) until a backend resolves them.
//! Each op family's launcher is `ops/<family>/launch.rs`; this file holds the launch types, [`node_launches`]
//! (which asks the node's family) and the optimiser launchers (AdamW here, SGD / EMA / accumulation / the
//! gradient norm in `optim`: optimiser steps, not graph ops).

mod adamw;
pub mod optim;

use std::collections::BTreeSet;

use super::{AdamWSlot, Loc};
use crate::error::{Error, Result};
use crate::graph::{Graph, Node, NodeId};
use crate::optim::AdamWConfig;
use crate::tensor::DType;

/// One kernel argument, passed by value as in `cuLaunchKernel`.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    /// A device pointer to the start of a tensor.
    Ptr(Loc),
    I32(i32),
    I64(i64),
    F32(f32),
    /// A `#[repr(C)]` struct passed by value (its bytes, laid out as the `.cu` struct).
    Bytes(Vec<u8>),
}

impl Arg {
    /// The argument's bytes, with pointers resolved by `ptr`.
    pub fn to_bytes(&self, ptr: &mut dyn FnMut(Loc) -> Result<u64>) -> Result<Vec<u8>> {
        Ok(match self {
            Arg::Ptr(l) => ptr(*l)?.to_le_bytes().to_vec(),
            Arg::I32(v) => v.to_le_bytes().to_vec(),
            Arg::I64(v) => v.to_le_bytes().to_vec(),
            Arg::F32(v) => v.to_le_bytes().to_vec(),
            Arg::Bytes(b) => b.clone(),
        })
    }
}

/// One kernel launch.
#[derive(Clone, Debug, PartialEq)]
pub struct Launch {
    /// The `.cu` file stem that defines the kernel.
    pub file: &'static str,
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    /// Dynamic shared memory in bytes.
    pub smem: u32,
    pub args: Vec<Arg>,
}

static LAUNCHED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());

/// Note that a backend launched `kernel` (for the test that every kernel has a parity case).
pub fn record_launch(kernel: &str) {
    if let Ok(mut s) = LAUNCHED.lock() {
        if !s.contains(kernel) {
            s.insert(kernel.to_string());
        }
    }
}

/// Every kernel launched in this process so far.
pub fn launched_kernels() -> BTreeSet<String> {
    LAUNCHED.lock().map(|s| s.clone()).unwrap_or_default()
}

/// Argument storage for a launch: every argument's bytes in 8-byte aligned slots, and the `void**` array
/// pointing at them (what `cuLaunchKernel` and the emulator take).
pub struct PackedArgs {
    slots: Vec<Vec<u64>>,
}

impl PackedArgs {
    pub fn new(launch: &Launch, ptr: &mut dyn FnMut(Loc) -> Result<u64>) -> Result<Self> {
        let mut slots = Vec::with_capacity(launch.args.len());
        for a in &launch.args {
            let b = a.to_bytes(ptr)?;
            let mut words = vec![0u64; b.len().div_ceil(8).max(1)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..b.len()].copy_from_slice(&b);
            slots.push(words);
        }
        Ok(PackedArgs { slots })
    }
    /// Pointers to each argument; valid while `self` lives.
    pub fn pointers(&mut self) -> Vec<*mut std::ffi::c_void> {
        self.slots.iter_mut().map(|s| s.as_mut_ptr() as *mut std::ffi::c_void).collect()
    }
}

/// The dtype suffix of kernel symbols (`add_fwd_f16`).
pub fn suffix(d: DType) -> &'static str {
    d.name()
}

/// Threads per block for one-element-per-thread kernels, and a grid that covers `n` (kernels loop over any
/// remainder with a grid stride).
pub const BLOCK: u32 = 256;
pub fn grid_for(n: usize) -> [u32; 3] {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535);
    [blocks as u32, 1, 1]
}

/// What a launcher sees of a node.
pub struct NodeCtx<'a> {
    pub graph: &'a Graph,
    pub id: NodeId,
    pub node: &'a Node,
    pub inputs: Vec<&'a Node>,
    pub ins: &'a [Loc],
    pub out: Loc,
    /// The node's workspace (`ops::workspace_bytes(graph, id)` bytes, placed by the planner).
    pub ws: Loc,
}

impl NodeCtx<'_> {
    /// The workspace, checked to hold `bytes` (the planner gives what `ops::workspace_bytes` asks for).
    pub fn workspace(&self, bytes: usize) -> Result<Loc> {
        if self.ws.bytes < bytes {
            return Err(Error::Plan(format!(
                "node {} ({}) needs {bytes} workspace bytes, the plan gave {}",
                self.id.0,
                self.node.op.describe(),
                self.ws.bytes
            )));
        }
        Ok(Loc { bytes, ..self.ws })
    }
}

fn unsupported(ctx: &NodeCtx) -> Error {
    let dts: Vec<String> = ctx.inputs.iter().map(|n| format!("{} {:?}", n.dtype, n.shape)).collect();
    Error::backend(
        "kernels",
        format!("no CUDA kernel for node {} ({}) on inputs [{}] yet", ctx.id.0, ctx.node.op.describe(), dts.join(", ")),
    )
}

/// The launches that compute node `id` of `graph`, with inputs at `ins`, the output at `out` and the
/// workspace at `ws`.
pub fn node_launches(graph: &Graph, id: NodeId, ins: &[Loc], out: Loc, ws: Loc) -> Result<Vec<Launch>> {
    let node = graph.node(id);
    let inputs: Vec<&Node> = node.inputs.iter().map(|i| graph.node(*i)).collect();
    let ctx = NodeCtx { graph, id, node, inputs, ins, out, ws };
    // The node's family answers with its launches, or `None` for an op or dtype it has no kernel for.
    if let Some(l) = crate::ops::launches(&ctx)? {
        return Ok(l);
    }
    Err(unsupported(&ctx))
}

/// The launches of one AdamW update.
pub fn adamw_launches(slot: &AdamWSlot, cfg: &AdamWConfig, step: u32, grad_scale: f32) -> Result<Vec<Launch>> {
    adamw::launches(slot, cfg, step, grad_scale)
}
