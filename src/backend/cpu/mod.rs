//! The CPU backends: every op in Rust, f16/bf16 storage, threads through rayon, matrix products through the
//! `gemm` crate. Two of them share all code but the op kernels they pick ([`CpuMode`]):
//! - [`CpuReference`], the exact reference every other backend is compared with (f64 accumulation where the
//!   result would otherwise depend on the order of a long sum);
//! - [`CpuBackend`], the engine that runs models on machines without a GPU: an op family's fast path (f32
//!   accumulation, blocked, vectorised, all cores) where it has one, else the reference code. It is itself checked
//!   against [`CpuReference`] by the parity suite (`tests/cpu_fast.rs`).

pub(crate) mod kernels;

use super::{AdamWSlot, Backend, Loc, Mems, SgdSlot, Space};
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId, Op};
use crate::optim::{AdamWConfig, SgdConfig};
use crate::tensor::DType;

pub use kernels::{accumulate, adamw_update, ema_update, run_op, run_op_mode, sgd_update, sum_squares, CpuMode, View};

/// Host memory, 64-byte aligned (planner offsets are multiples of 256).
pub struct CpuMem {
    words: Vec<Align64>,
    bytes: usize,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Align64([u8; 64]);

impl CpuMem {
    pub fn new(bytes: usize) -> Self {
        CpuMem { words: vec![Align64([0; 64]); bytes.div_ceil(64)], bytes }
    }
    pub fn len(&self) -> usize {
        self.bytes
    }
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }
    pub fn as_bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<Align64, u8>(&self.words)[..self.bytes]
    }
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<Align64, u8>(&mut self.words)[..self.bytes]
    }
}

// SAFETY: Align64 is plain bytes with no padding.
unsafe impl bytemuck::Zeroable for Align64 {}
unsafe impl bytemuck::Pod for Align64 {}

/// The CPU engine: fast paths where an op family has one (see the module doc).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

/// The exact CPU reference (see the module doc); the same memory and optimiser code as [`CpuBackend`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuReference;

fn range(mem: &CpuMem, loc: Loc) -> Result<std::ops::Range<usize>> {
    let end = loc.offset.checked_add(loc.bytes).filter(|&e| e <= mem.len());
    match end {
        Some(end) => Ok(loc.offset..end),
        None => Err(Error::Plan(format!("{loc:?} lies outside its region of {} bytes", mem.len()))),
    }
}

impl Backend for CpuBackend {
    type Mem = CpuMem;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn alloc(&self, bytes: usize) -> Result<CpuMem> {
        Ok(CpuMem::new(bytes))
    }

    fn write(&self, mem: &mut CpuMem, offset: usize, data: &[u8]) -> Result<()> {
        let r = range(mem, Loc { space: Space::Arena, offset, bytes: data.len() })?;
        mem.as_bytes_mut()[r].copy_from_slice(data);
        Ok(())
    }

    fn read(&self, mem: &CpuMem, offset: usize, out: &mut [u8]) -> Result<()> {
        let r = range(mem, Loc { space: Space::Arena, offset, bytes: out.len() })?;
        out.copy_from_slice(&mem.as_bytes()[r]);
        Ok(())
    }

    fn exec(
        &self,
        graph: &Graph,
        id: NodeId,
        ins: &[Loc],
        out: Loc,
        _ws: Loc,
        inplace: Option<usize>,
        mems: &mut Mems<CpuMem>,
    ) -> Result<()> {
        exec_node(CpuMode::Fast, graph, id, ins, out, inplace, mems)
    }

    fn adamw(
        &self,
        slot: &AdamWSlot,
        cfg: &AdamWConfig,
        step: u32,
        grad_scale: f32,
        mems: &mut Mems<CpuMem>,
    ) -> Result<()> {
        let grad = grad_copy(mems, slot.grad)?;
        let Mems { arena, params, state } = mems;
        let gbytes: &[u8] = match &grad {
            Some(v) => v,
            None => &arena.as_bytes()[range(arena, slot.grad)?],
        };
        let pr = range(params, slot.param)?;
        let mut ranges = vec![range(state, slot.m)?, range(state, slot.v)?];
        if let Some(l) = slot.master {
            ranges.push(range(state, l)?);
        }
        let mut parts = disjoint_mut(state.as_bytes_mut(), &ranges)?.into_iter();
        let (Some(m), Some(v)) = (parts.next(), parts.next()) else {
            return Err(Error::Plan("adamw: missing moment buffers".into()));
        };
        let master = parts.next().map(bytemuck::cast_slice_mut::<u8, f32>);
        adamw_update(
            &mut params.as_bytes_mut()[pr],
            slot.param_dtype,
            gbytes,
            slot.grad_dtype,
            bytemuck::cast_slice_mut(m),
            bytemuck::cast_slice_mut(v),
            master,
            cfg,
            step,
            grad_scale,
        );
        Ok(())
    }

    fn sum_squares(&self, loc: Loc, dtype: DType, mems: &Mems<CpuMem>) -> Result<f64> {
        let mem = mems.get(loc.space);
        Ok(sum_squares(&mem.as_bytes()[range(mem, loc)?], dtype))
    }

    fn sgd(&self, slot: &SgdSlot, cfg: &SgdConfig, first: bool, grad_scale: f32, mems: &mut Mems<CpuMem>) -> Result<()> {
        let grad = grad_copy(mems, slot.grad)?;
        let Mems { arena, params, state } = mems;
        let gbytes: &[u8] = match &grad {
            Some(v) => v,
            None => &arena.as_bytes()[range(arena, slot.grad)?],
        };
        let pr = range(params, slot.param)?;
        let ranges: Vec<_> = [slot.momentum, slot.master].iter().flatten().map(|l| range(state, *l)).collect::<Result<_>>()?;
        let mut parts = disjoint_mut(state.as_bytes_mut(), &ranges)?.into_iter();
        let momentum = slot.momentum.and_then(|_| parts.next()).map(bytemuck::cast_slice_mut::<u8, f32>);
        let master = slot.master.and_then(|_| parts.next()).map(bytemuck::cast_slice_mut::<u8, f32>);
        sgd_update(
            &mut params.as_bytes_mut()[pr],
            slot.param_dtype,
            gbytes,
            slot.grad_dtype,
            momentum,
            master,
            cfg,
            first,
            grad_scale,
        );
        Ok(())
    }

    fn ema(&self, ema: Loc, src: Loc, src_dtype: DType, numel: usize, decay: f32, mems: &mut Mems<CpuMem>) -> Result<()> {
        let src_bytes = {
            let mem = mems.get(src.space);
            mem.as_bytes()[range(mem, src)?].to_vec()
        };
        let er = range(&mems.state, ema)?;
        let e = bytemuck::cast_slice_mut::<u8, f32>(&mut mems.state.as_bytes_mut()[er]);
        ema_update(&mut e[..numel], &src_bytes[..numel * src_dtype.size()], src_dtype, decay);
        Ok(())
    }

    fn accumulate(&self, acc: Loc, grad: Loc, grad_dtype: DType, numel: usize, first: bool, mems: &mut Mems<CpuMem>) -> Result<()> {
        let g = {
            let mem = mems.get(grad.space);
            mem.as_bytes()[range(mem, grad)?].to_vec()
        };
        let ar = range(&mems.state, acc)?;
        let a = bytemuck::cast_slice_mut::<u8, f32>(&mut mems.state.as_bytes_mut()[ar]);
        accumulate(&mut a[..numel], &g[..numel * grad_dtype.size()], grad_dtype, first);
        Ok(())
    }
}

/// Runs node `id` of `graph` with the op code `mode` picks.
fn exec_node(
    mode: CpuMode,
    graph: &Graph,
    id: NodeId,
    ins: &[Loc],
    out: Loc,
    inplace: Option<usize>,
    mems: &mut Mems<CpuMem>,
) -> Result<()> {
    let node = graph.node(id);
    if out.space != Space::Arena {
        return Err(Error::Plan(format!("node {} ({}) writes outside the arena", id.0, node.op.describe())));
    }
    // A reshape over its own input is already done: the bytes are the same.
    if inplace.is_some() && matches!(node.op, Op::Reshape { .. }) {
        return Ok(());
    }
    if ins.len() != node.inputs.len() {
        return Err(Error::Plan(format!("node {} ({}): {} input locations for {} inputs", id.0, node.op.describe(), ins.len(), node.inputs.len())));
    }
    // The in-place input is copied out first (into a pooled scratch buffer), so every slice below is disjoint
    // from the output.
    let mut saved: Option<kernels::Buf> = None;
    if let Some(i) = inplace {
        if ins.get(i) != Some(&out) {
            return Err(Error::Plan(format!("node {} in-place input {i} is not at the output", id.0)));
        }
        let src = &mems.arena.as_bytes()[range(&mems.arena, out)?];
        let mut buf = kernels::Buf::new(src.len().div_ceil(4));
        bytemuck::cast_slice_mut::<f32, u8>(&mut buf[..])[..src.len()].copy_from_slice(src);
        saved = Some(buf);
    }
    let saved_bytes: &[u8] = match &saved {
        Some(b) => &bytemuck::cast_slice::<f32, u8>(&b[..])[..out.bytes],
        None => &[],
    };
    // An input is read from the saved copy when it is the in-place input (or the same node again, as in x*x).
    let from_saved = |l: &Loc| inplace.is_some() && *l == out;
    for (i, l) in ins.iter().enumerate() {
        if !from_saved(l) && l.overlaps(&out) {
            return Err(Error::Plan(format!(
                "node {} ({}): input {i} at {l:?} overlaps the output at {out:?}",
                id.0,
                node.op.describe()
            )));
        }
    }
    let out_range = range(&mems.arena, out)?;
    let arena_ptr = mems.arena.as_bytes_mut().as_mut_ptr();
    // SAFETY: `out_range` is in bounds of the arena and, as checked above, disjoint from every input range
    // that is read through a shared slice below (the in-place input is read from `saved` instead).
    let out_bytes = unsafe { std::slice::from_raw_parts_mut(arena_ptr.add(out_range.start), out_range.len()) };
    let view = |i: usize, l: &Loc| -> Result<View> {
        let input = graph.node(node.inputs[i]);
        let data: &[u8] = if from_saved(l) {
            saved_bytes
        } else if l.space == Space::Arena {
            let r = range(&mems.arena, *l)?;
            // SAFETY: in bounds, and disjoint from `out_bytes` (checked above); shared reads only.
            unsafe { std::slice::from_raw_parts(arena_ptr.add(r.start), r.len()) }
        } else {
            let mem = mems.get(l.space);
            &mem.as_bytes()[range(mem, *l)?]
        };
        Ok(View { shape: &input.shape, dtype: input.dtype, data })
    };
    // Most ops take at most four inputs: their views live on the stack.
    let mut few = [View { shape: &[], dtype: DType::U8, data: &[] }; 4];
    let many: Vec<View>;
    let views: &[View] = if ins.len() <= few.len() {
        for (i, l) in ins.iter().enumerate() {
            few[i] = view(i, l)?;
        }
        &few[..ins.len()]
    } else {
        many = ins.iter().enumerate().map(|(i, l)| view(i, l)).collect::<Result<_>>()?;
        &many
    };
    let out_view = View { shape: &node.shape, dtype: node.dtype, data: &[] };
    // Why shape inference is skipped: every node of a `Graph` got its shape and dtype from `op::infer` on
    // its inputs' shapes and dtypes when it was added (`Graph::push`, the only way nodes enter a graph; a
    // recomputed copy clones a node and rewires it to copies of the same shapes), and the views above carry
    // exactly those shapes and dtypes. The byte counts are still checked.
    kernels::run_op_unchecked(mode, &node.op, views, &out_view, out_bytes)
        .map_err(|e| Error::backend("cpu", format!("node {} ({}): {e}", id.0, node.op.describe())))
}

impl Backend for CpuReference {
    type Mem = CpuMem;

    fn name(&self) -> &'static str {
        "cpu-reference"
    }
    fn alloc(&self, bytes: usize) -> Result<CpuMem> {
        CpuBackend.alloc(bytes)
    }
    fn write(&self, mem: &mut CpuMem, offset: usize, data: &[u8]) -> Result<()> {
        CpuBackend.write(mem, offset, data)
    }
    fn read(&self, mem: &CpuMem, offset: usize, out: &mut [u8]) -> Result<()> {
        CpuBackend.read(mem, offset, out)
    }
    fn exec(
        &self,
        graph: &Graph,
        id: NodeId,
        ins: &[Loc],
        out: Loc,
        _ws: Loc,
        inplace: Option<usize>,
        mems: &mut Mems<CpuMem>,
    ) -> Result<()> {
        exec_node(CpuMode::Exact, graph, id, ins, out, inplace, mems)
    }
    fn adamw(&self, slot: &AdamWSlot, cfg: &AdamWConfig, step: u32, grad_scale: f32, mems: &mut Mems<CpuMem>) -> Result<()> {
        CpuBackend.adamw(slot, cfg, step, grad_scale, mems)
    }
    fn sum_squares(&self, loc: Loc, dtype: DType, mems: &Mems<CpuMem>) -> Result<f64> {
        CpuBackend.sum_squares(loc, dtype, mems)
    }
    fn sgd(&self, slot: &SgdSlot, cfg: &SgdConfig, first: bool, grad_scale: f32, mems: &mut Mems<CpuMem>) -> Result<()> {
        CpuBackend.sgd(slot, cfg, first, grad_scale, mems)
    }
    fn ema(&self, ema: Loc, src: Loc, src_dtype: DType, numel: usize, decay: f32, mems: &mut Mems<CpuMem>) -> Result<()> {
        CpuBackend.ema(ema, src, src_dtype, numel, decay, mems)
    }
    fn accumulate(&self, acc: Loc, grad: Loc, grad_dtype: DType, numel: usize, first: bool, mems: &mut Mems<CpuMem>) -> Result<()> {
        CpuBackend.accumulate(acc, grad, grad_dtype, numel, first, mems)
    }
}

/// A copy of a gradient that lives outside the arena (an accumulator in the state region), so the update can
/// borrow the state region mutably; `None` for an arena gradient (borrowed in place).
fn grad_copy(mems: &Mems<CpuMem>, loc: Loc) -> Result<Option<Vec<u8>>> {
    if loc.space == Space::Arena {
        return Ok(None);
    }
    let mem = mems.get(loc.space);
    Ok(Some(mem.as_bytes()[range(mem, loc)?].to_vec()))
}

/// Mutable slices of `buf` at the given ranges, which must not overlap (returned in the order given).
fn disjoint_mut<'a>(buf: &'a mut [u8], ranges: &[std::ops::Range<usize>]) -> Result<Vec<&'a mut [u8]>> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].start);
    let mut out: Vec<Option<&'a mut [u8]>> = (0..ranges.len()).map(|_| None).collect();
    let mut rest = buf;
    let mut consumed = 0;
    for &i in &order {
        let r = &ranges[i];
        if r.start < consumed || r.end > consumed + rest.len() {
            return Err(Error::Plan(format!("state ranges overlap or overrun: {ranges:?}")));
        }
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - consumed);
        let (mine, tail) = tail.split_at_mut(r.len());
        out[i] = Some(mine);
        rest = tail;
        consumed = r.end;
    }
    Ok(out.into_iter().flatten().collect())
}
