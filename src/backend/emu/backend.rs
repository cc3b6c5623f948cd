//! The `emu` backend: runs graphs with the `kernels/*.cu` sources compiled for the CPU through the emulation
//! header, using the same launchers as the `cuda` backend. Slow (one fiber per CUDA thread); it exists so CI,
//! which has no GPU, runs every kernel's logic against the CPU reference.

use super::ffi;
use crate::backend::cpu::{CpuBackend, CpuMem};
use crate::backend::launch::{adamw_launches, node_launches, optim, record_launch, Launch, PackedArgs};
use crate::backend::{AdamWSlot, Backend, Loc, Mems, SgdSlot, Space};
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId};
use crate::optim::{AdamWConfig, SgdConfig};
use crate::tensor::DType;

#[derive(Clone, Copy, Debug, Default)]
pub struct EmuBackend {
    /// Run every launch on private copies of its tensors, each followed by a guard page, so an
    /// out-of-bounds access ends the launch with an error instead of touching a neighbour; and run the
    /// race-check copy of every kernel, so a shared-memory race between warps is an error too.
    pub checked: bool,
}

/// Base address and length of each region, taken once per launch.
struct Bases([(Space, u64, usize); 3]);

impl Bases {
    fn new(mems: &mut Mems<CpuMem>) -> Self {
        let at = |m: &mut CpuMem| (m.as_bytes_mut().as_mut_ptr() as u64, m.len());
        let (a, p, s) = (at(&mut mems.arena), at(&mut mems.params), at(&mut mems.state));
        Bases([(Space::Arena, a.0, a.1), (Space::Params, p.0, p.1), (Space::State, s.0, s.1)])
    }
    /// The address of `l`, checked to lie inside its region.
    fn addr(&self, l: Loc) -> Result<u64> {
        let (_, base, len) = (self.0.iter().find(|(s, _, _)| *s == l.space))
            .copied()
            .ok_or_else(|| Error::Plan(format!("{l:?}: no such region on emu")))?;
        if l.offset.checked_add(l.bytes).is_none_or(|e| e > len) {
            return Err(Error::Plan(format!("{l:?} outside its region of {len} bytes")));
        }
        Ok(base + l.offset as u64)
    }
}

impl EmuBackend {
    /// `checked` from `INSTAGEN_EMU_CHECKED=1`.
    pub fn new() -> Self {
        EmuBackend { checked: std::env::var("INSTAGEN_EMU_CHECKED").is_ok_and(|v| v == "1") }
    }

    fn run(&self, launch: &Launch, mems: &mut Mems<CpuMem>) -> Result<()> {
        record_launch(&launch.kernel);
        let bases = Bases::new(mems);
        if !self.checked {
            let mut args = PackedArgs::new(launch, &mut |l| bases.addr(l))?;
            let ptrs = args.pointers();
            // SAFETY: every pointer argument points into a live region, in bounds for the tensor it names
            // (checked by `addr`), and `mems` is borrowed mutably for the whole launch.
            return unsafe { ffi::launch(&launch.kernel, launch.grid, launch.block, launch.smem, &ptrs) };
        }
        // Checked: one guarded copy per distinct tensor (the same Loc twice, as in place, shares one copy).
        let mut copies: Vec<(Loc, ffi::GuardedBuf)> = Vec::new();
        let mut args = PackedArgs::new(launch, &mut |l| {
            if let Some((_, g)) = copies.iter().find(|(c, _)| *c == l) {
                return Ok(g.as_ptr() as u64);
            }
            let src = bases.addr(l)?;
            let mut g = ffi::GuardedBuf::new(l.bytes)?;
            // SAFETY: `addr` checked the range lies in its region.
            g.as_bytes_mut().copy_from_slice(unsafe { std::slice::from_raw_parts(src as *const u8, l.bytes) });
            let p = g.as_ptr() as u64;
            copies.push((l, g));
            Ok(p)
        })?;
        let ptrs = args.pointers();
        // SAFETY: every pointer argument is a guarded buffer of exactly its tensor's size.
        unsafe { ffi::launch_checked(&launch.kernel, launch.grid, launch.block, launch.smem, &ptrs)? };
        for (l, g) in &copies {
            let dst = bases.addr(*l)?;
            // SAFETY: in bounds (checked by `addr`); no other reference into the region is live.
            unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, l.bytes) }.copy_from_slice(g.as_bytes());
        }
        Ok(())
    }
}

impl Backend for EmuBackend {
    type Mem = CpuMem;

    fn name(&self) -> &'static str {
        "emu"
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
        ws: Loc,
        _inplace: Option<usize>,
        mems: &mut Mems<CpuMem>,
    ) -> Result<()> {
        for l in node_launches(graph, id, ins, out, ws)? {
            self.run(&l, mems).map_err(|e| {
                Error::backend("emu", format!("node {} ({}), kernel {}: {e}", id.0, graph.node(id).op.describe(), l.kernel))
            })?;
        }
        Ok(())
    }

    fn adamw(&self, slot: &AdamWSlot, cfg: &AdamWConfig, step: u32, grad_scale: f32, mems: &mut Mems<CpuMem>) -> Result<()> {
        for l in adamw_launches(slot, cfg, step, grad_scale)? {
            self.run(&l, mems).map_err(|e| Error::backend("emu", format!("adamw, kernel {}: {e}", l.kernel)))?;
        }
        Ok(())
    }

    /// Read back and summed on the host (the tensor is in host memory already).
    fn sum_squares(&self, loc: Loc, dtype: DType, mems: &Mems<CpuMem>) -> Result<f64> {
        CpuBackend.sum_squares(loc, dtype, mems)
    }
    fn sgd(&self, slot: &SgdSlot, cfg: &SgdConfig, first: bool, grad_scale: f32, mems: &mut Mems<CpuMem>) -> Result<()> {
        for l in optim::sgd_launches(slot, cfg, first, grad_scale)? {
            self.run(&l, mems).map_err(|e| Error::backend("emu", format!("sgd, kernel {}: {e}", l.kernel)))?;
        }
        Ok(())
    }

    fn ema(&self, ema: Loc, src: Loc, src_dtype: DType, numel: usize, decay: f32, mems: &mut Mems<CpuMem>) -> Result<()> {
        for l in optim::ema_launches(ema, src, src_dtype, numel, decay)? {
            self.run(&l, mems).map_err(|e| Error::backend("emu", format!("ema, kernel {}: {e}", l.kernel)))?;
        }
        Ok(())
    }

    fn accumulate(&self, acc: Loc, grad: Loc, grad_dtype: DType, numel: usize, first: bool, mems: &mut Mems<CpuMem>) -> Result<()> {
        for l in optim::accumulate_launches(acc, grad, grad_dtype, numel, first)? {
            self.run(&l, mems).map_err(|e| Error::backend("emu", format!("accumulate, kernel {}: {e}", l.kernel)))?;
        }
        Ok(())
    }

    fn sum_squares_scratch(&self, numels: &[usize]) -> usize {
        optim::sumsq_scratch_bytes(numels)
    }

    /// Reduced on the device (`kernels/optim.cu`); one f64 is read back.
    fn sum_squares_many(&self, tensors: &[(Loc, DType)], scratch: Option<Loc>, mems: &mut Mems<CpuMem>) -> Result<f64> {
        let Some(scratch) = scratch else {
            let mut sum = 0.0;
            for &(loc, dtype) in tensors {
                sum += self.sum_squares(loc, dtype, mems)?;
            }
            return Ok(sum);
        };
        let (launches, at) = optim::sumsq_launches(tensors, scratch)?;
        for l in launches {
            self.run(&l, mems).map_err(|e| Error::backend("emu", format!("sum of squares, kernel {}: {e}", l.kernel)))?;
        }
        let mut b = [0u8; 8];
        self.read(mems.get(scratch.space), at, &mut b)?;
        Ok(f64::from_le_bytes(b))
    }
}
