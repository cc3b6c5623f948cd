//! The `cuda` backend: the `kernels/*.cu` entry points launched through cudarc on one stream, memory in one
//! device allocation per region (arena, parameters, optimiser state), modules cached by (file, defines, arch).
//!
//! `INSTAGEN_SYNC=1` synchronises after every launch and reports the first failing kernel by name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr};
use cudarc::nvrtc::Ptx;

use super::probe;
use crate::backend::launch::{adamw_launches, node_launches, optim, record_launch, Launch, PackedArgs};
use crate::backend::{AdamWSlot, Backend, Loc, Mems, SgdSlot};
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId};
use crate::optim::{AdamWConfig, SgdConfig};
use crate::tensor::{decode_f32, DType};

fn cuda_err(what: impl std::fmt::Display, e: impl std::fmt::Debug) -> Error {
    Error::backend("cuda", format!("{what}: {e:?}"))
}

/// A module's identity: the `.cu` stem, the `-D` defines it was compiled with, and the target architecture.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModuleKey {
    pub file: String,
    pub defines: Vec<(String, String)>,
    pub arch: (i32, i32),
}

/// One device region.
pub struct CudaMem {
    buf: Option<CudaSlice<u8>>,
    bytes: usize,
}

/// Cheap to clone: clones share the context, stream and module caches.
#[derive(Clone)]
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: (i32, i32),
    sync: bool,
    modules: Arc<Mutex<HashMap<ModuleKey, Arc<CudaModule>>>>,
    functions: Arc<Mutex<HashMap<(ModuleKey, String), CudaFunction>>>,
}

impl CudaBackend {
    /// Open GPU `ordinal`. Probes for the driver first (cudarc panics when libcuda is absent).
    pub fn new(ordinal: usize) -> Result<Self> {
        let p = probe::probe();
        if p.devices.len() <= ordinal {
            let why = p.error.unwrap_or_else(|| format!("{} GPU(s) found", p.devices.len()));
            return Err(Error::backend("cuda", format!("no GPU {ordinal}: {why}")));
        }
        if !crate::kernels::compiled() {
            return Err(Error::backend("cuda", "this build has no compiled kernels (NVRTC was missing at build time)"));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err("creating the context", e))?;
        // One stream orders everything, so cudarc's per-buffer events are not needed.
        // SAFETY: called before any allocation or launch on this context.
        unsafe { ctx.disable_event_tracking() };
        let arch = ctx.compute_capability().map_err(|e| cuda_err("compute capability", e))?;
        let sync = std::env::var("INSTAGEN_SYNC").is_ok_and(|v| v == "1");
        let stream = ctx.default_stream();
        Ok(CudaBackend { ctx, stream, arch, sync, modules: Arc::default(), functions: Arc::default() })
    }

    pub fn arch(&self) -> (i32, i32) {
        self.arch
    }

    /// The module for `file` with `defines`, loaded once per key. Modules built at build time (no defines) are
    /// taken as CUBIN for this architecture when there is one, else as PTX for the driver to JIT.
    fn module(&self, file: &str, defines: &[(String, String)]) -> Result<Arc<CudaModule>> {
        let key = ModuleKey { file: file.to_string(), defines: defines.to_vec(), arch: self.arch };
        let mut cache = self.modules.lock().map_err(|_| Error::backend("cuda", "module cache poisoned"))?;
        if let Some(m) = cache.get(&key) {
            return Ok(m.clone());
        }
        if !defines.is_empty() {
            return Err(Error::backend("cuda", format!("{file}.cu with defines {defines:?}: runtime specialisation is not built yet")));
        }
        let built = crate::kernels::module_for_capability(file, self.arch.0, self.arch.1)
            .ok_or_else(|| Error::backend("cuda", format!("no compiled module for {file}.cu at sm_{}{}", self.arch.0, self.arch.1)))?;
        let exact = built.arch == format!("sm_{}{}", self.arch.0, self.arch.1);
        let loaded = if exact {
            self.ctx.load_module(Ptx::from_binary(built.cubin.to_vec()))
        } else {
            Err(cudarc::driver::DriverError(cudarc::driver::sys::CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU))
        };
        let module = match loaded {
            Ok(m) => m,
            Err(_) => self.ctx.load_module(Ptx::from_src(built.ptx)).map_err(|e| cuda_err(format!("loading {file}.cu"), e))?,
        };
        cache.insert(key, module.clone());
        Ok(module)
    }

    fn function(&self, file: &str, kernel: &str) -> Result<CudaFunction> {
        let key = (ModuleKey { file: file.to_string(), defines: vec![], arch: self.arch }, kernel.to_string());
        if let Some(f) = self.functions.lock().map_err(|_| Error::backend("cuda", "function cache poisoned"))?.get(&key) {
            return Ok(f.clone());
        }
        let f = self.module(file, &[])?.load_function(kernel).map_err(|e| cuda_err(format!("{file}.cu: {kernel}"), e))?;
        self.functions.lock().map_err(|_| Error::backend("cuda", "function cache poisoned"))?.insert(key, f.clone());
        Ok(f)
    }

    fn base(&self, mem: &CudaMem) -> u64 {
        mem.buf.as_ref().map_or(0, |b| b.device_ptr(&self.stream).0)
    }

    fn run(&self, launch: &Launch, mems: &Mems<CudaMem>) -> Result<()> {
        record_launch(&launch.kernel);
        let f = self.function(launch.file, &launch.kernel)?;
        let mut args = PackedArgs::new(launch, &mut |l: Loc| {
            let m = mems.get(l.space);
            if l.offset + l.bytes > m.bytes {
                return Err(Error::Plan(format!("{l:?} outside a region of {} bytes", m.bytes)));
            }
            Ok(self.base(m) + l.offset as u64)
        })?;
        let mut ptrs = args.pointers();
        let (g, b) = (launch.grid, launch.block);
        // SAFETY: the argument array matches the kernel's parameters (the launcher is written against the
        // `.cu` signature) and every pointer lies inside a live device region.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                (g[0], g[1], g[2]),
                (b[0], b[1], b[2]),
                launch.smem,
                self.stream.cu_stream(),
                &mut ptrs,
            )
        }
        .map_err(|e| cuda_err(format!("launching {}", launch.kernel), e))?;
        if self.sync {
            self.synchronize().map_err(|e| Error::backend("cuda", format!("after kernel {}: {e}", launch.kernel)))?;
        }
        Ok(())
    }
}

impl Backend for CudaBackend {
    type Mem = CudaMem;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn alloc(&self, bytes: usize) -> Result<CudaMem> {
        let buf = if bytes == 0 {
            None
        } else {
            Some(self.stream.alloc_zeros::<u8>(bytes).map_err(|e| cuda_err(format!("allocating {bytes} bytes"), e))?)
        };
        Ok(CudaMem { buf, bytes })
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|e| format!("unknown ({e:?})"))
    }

    fn memory_available(&self) -> Result<usize> {
        let ctx = self.stream.context();
        ctx.bind_to_thread().map_err(|e| cuda_err("binding the context", e))?;
        ctx.mem_get_info().map(|(free, _total)| free).map_err(|e| cuda_err("cuMemGetInfo", e))
    }

    fn write(&self, mem: &mut CudaMem, offset: usize, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let (end, len) = (offset + data.len(), mem.bytes);
        let buf = mem.buf.as_mut().filter(|_| end <= len).ok_or_else(|| Error::Plan(format!("write {offset}..{end} outside {len} bytes")))?;
        self.stream.memcpy_htod(data, &mut buf.slice_mut(offset..end)).map_err(|e| cuda_err("copy to device", e))
    }

    fn read(&self, mem: &CudaMem, offset: usize, out: &mut [u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let (end, len) = (offset + out.len(), mem.bytes);
        let buf = mem.buf.as_ref().filter(|_| end <= len).ok_or_else(|| Error::Plan(format!("read {offset}..{end} outside {len} bytes")))?;
        self.stream.memcpy_dtoh(&buf.slice(offset..end), out).map_err(|e| cuda_err("copy from device", e))?;
        self.synchronize()
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| cuda_err("synchronize", e))
    }

    fn exec(
        &self,
        graph: &Graph,
        id: NodeId,
        ins: &[Loc],
        out: Loc,
        ws: Loc,
        _inplace: Option<usize>,
        mems: &mut Mems<CudaMem>,
    ) -> Result<()> {
        for l in node_launches(graph, id, ins, out, ws)? {
            self.run(&l, mems).map_err(|e| Error::backend("cuda", format!("node {} ({}): {e}", id.0, graph.node(id).op.describe())))?;
        }
        Ok(())
    }

    fn adamw(&self, slot: &AdamWSlot, cfg: &AdamWConfig, step: u32, grad_scale: f32, mems: &mut Mems<CudaMem>) -> Result<()> {
        for l in adamw_launches(slot, cfg, step, grad_scale)? {
            self.run(&l, mems)?;
        }
        Ok(())
    }

    /// One tensor, read back and summed on the host (the trainer's global norm uses `sum_squares_many`, reduced
    /// on the device).
    fn sum_squares(&self, loc: Loc, dtype: DType, mems: &Mems<CudaMem>) -> Result<f64> {
        let mut bytes = vec![0u8; loc.bytes];
        self.read(mems.get(loc.space), loc.offset, &mut bytes)?;
        let mut v = vec![0f32; loc.bytes / dtype.size()];
        decode_f32(dtype, &bytes, &mut v);
        Ok(v.iter().map(|x| (*x as f64) * (*x as f64)).sum())
    }
    fn sgd(&self, slot: &SgdSlot, cfg: &SgdConfig, first: bool, grad_scale: f32, mems: &mut Mems<CudaMem>) -> Result<()> {
        for l in optim::sgd_launches(slot, cfg, first, grad_scale)? {
            self.run(&l, mems)?;
        }
        Ok(())
    }

    fn ema(&self, ema: Loc, src: Loc, src_dtype: DType, numel: usize, decay: f32, mems: &mut Mems<CudaMem>) -> Result<()> {
        for l in optim::ema_launches(ema, src, src_dtype, numel, decay)? {
            self.run(&l, mems)?;
        }
        Ok(())
    }

    fn accumulate(&self, acc: Loc, grad: Loc, grad_dtype: DType, numel: usize, first: bool, mems: &mut Mems<CudaMem>) -> Result<()> {
        for l in optim::accumulate_launches(acc, grad, grad_dtype, numel, first)? {
            self.run(&l, mems)?;
        }
        Ok(())
    }

    fn sum_squares_scratch(&self, numels: &[usize]) -> usize {
        optim::sumsq_scratch_bytes(numels)
    }

    /// Reduced on the device (`kernels/optim.cu`); one f64 is read back.
    fn sum_squares_many(&self, tensors: &[(Loc, DType)], scratch: Option<Loc>, mems: &mut Mems<CudaMem>) -> Result<f64> {
        let Some(scratch) = scratch else {
            let mut sum = 0.0;
            for &(loc, dtype) in tensors {
                sum += self.sum_squares(loc, dtype, mems)?;
            }
            return Ok(sum);
        };
        let (launches, at) = optim::sumsq_launches(tensors, scratch)?;
        for l in launches {
            self.run(&l, mems)?;
        }
        let mut b = [0u8; 8];
        self.read(mems.get(scratch.space), at, &mut b)?;
        Ok(f64::from_le_bytes(b))
    }
}
