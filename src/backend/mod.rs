//! Backends run one graph node at a time on memory laid out by the planner.
//!
//! `cpu` (Rust, every op: the reference), `cuda` (the `kernels/*.cu` through cudarc) and `emu` (the same `.cu`
//! sources compiled for the CPU by the emulator). `launch` maps a node onto kernel launches (shared by cuda and
//! emu). The op-specific code of each backend lives with the op's family in `ops/<family>/`. The executor is
//! generic over [`Backend`].

pub mod cpu;
pub mod cuda;
pub mod emu;
pub mod launch;

use crate::error::Result;
use crate::graph::{Graph, NodeId};
use crate::optim::{AdamWConfig, SgdConfig};
use crate::tensor::DType;

/// Used when `/proc/meminfo` cannot be read (not Linux): 8 GiB.
pub const HOST_MEMORY_FALLBACK: usize = 8 << 30;

/// Host memory available to a new allocation: `MemAvailable` of `/proc/meminfo`, else [`HOST_MEMORY_FALLBACK`].
pub fn host_memory_available() -> usize {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<usize>().ok())
        .map_or(HOST_MEMORY_FALLBACK, |kb| kb.saturating_mul(1024))
}

/// Which memory region a tensor lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// Activations, placed by the memory planner.
    Arena,
    /// Parameters (weights), one region for all of them.
    Params,
    /// Optimiser state (moments and f32 master weights).
    State,
}

/// A tensor's place: region, byte offset and byte length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub space: Space,
    pub offset: usize,
    pub bytes: usize,
}

impl Loc {
    pub fn overlaps(&self, other: &Loc) -> bool {
        self.space == other.space
            && self.bytes > 0
            && other.bytes > 0
            && self.offset < other.offset + other.bytes
            && other.offset < self.offset + self.bytes
    }
}

/// The three memory regions an executor owns on a backend.
pub struct Mems<M> {
    pub arena: M,
    pub params: M,
    pub state: M,
}

impl<M> Mems<M> {
    pub fn get(&self, space: Space) -> &M {
        match space {
            Space::Arena => &self.arena,
            Space::Params => &self.params,
            Space::State => &self.state,
        }
    }
    pub fn get_mut(&mut self, space: Space) -> &mut M {
        match space {
            Space::Arena => &mut self.arena,
            Space::Params => &mut self.params,
            Space::State => &mut self.state,
        }
    }
}

/// One tensor's AdamW update: the parameter, its gradient, and its f32 state (moments; master weights when
/// the parameter is stored in f16/bf16).
#[derive(Clone, Copy, Debug)]
pub struct AdamWSlot {
    pub numel: usize,
    pub param: Loc,
    pub param_dtype: DType,
    pub grad: Loc,
    pub grad_dtype: DType,
    pub m: Loc,
    pub v: Loc,
    pub master: Option<Loc>,
}

/// `Clone` is a cheap handle copy (device parameters keep one beside each executor's).
/// One tensor's SGD update: the parameter, its gradient, the f32 momentum buffer (when momentum is used) and
/// the f32 master weights (when the parameter is stored in f16/bf16).
#[derive(Clone, Copy, Debug)]
pub struct SgdSlot {
    pub numel: usize,
    pub param: Loc,
    pub param_dtype: DType,
    pub grad: Loc,
    pub grad_dtype: DType,
    pub momentum: Option<Loc>,
    pub master: Option<Loc>,
}

pub trait Backend: Clone {
    /// One contiguous region of the backend's memory.
    type Mem;

    fn name(&self) -> &'static str;
    fn alloc(&self, bytes: usize) -> Result<Self::Mem>;
    fn write(&self, mem: &mut Self::Mem, offset: usize, data: &[u8]) -> Result<()>;
    fn read(&self, mem: &Self::Mem, offset: usize, out: &mut [u8]) -> Result<()>;

    /// Bytes that [`Backend::alloc`] can still hand out; the executor checks a graph's memory against it before
    /// allocating. Host backends: [`host_memory_available`].
    fn memory_available(&self) -> Result<usize> {
        Ok(host_memory_available())
    }

    /// The device, for reports (the GPU's name on `cuda`).
    fn device_name(&self) -> String {
        self.name().to_string()
    }

    /// Wait for all queued work (a no-op on synchronous backends).
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// Compute node `id` of `graph`. `ins[i]` locates its i-th input and `out` its output. When
    /// `inplace == Some(i)`, `out` and `ins[i]` are the same bytes (the planner's in-place reuse); no other
    /// input overlaps `out`. `ws` is the node's workspace (`ops::workspace_bytes`, placed by the planner;
    /// 0 bytes when the node's kernels need none), scratch that lives only during this call.
    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        graph: &Graph,
        id: NodeId,
        ins: &[Loc],
        out: Loc,
        ws: Loc,
        inplace: Option<usize>,
        mems: &mut Mems<Self::Mem>,
    ) -> Result<()>;

    /// One AdamW step (PyTorch semantics, decoupled weight decay, bias correction with `step` >= 1).
    /// Gradients are multiplied by `grad_scale` first (for loss scaling and clipping).
    fn adamw(
        &self,
        slot: &AdamWSlot,
        cfg: &AdamWConfig,
        step: u32,
        grad_scale: f32,
        mems: &mut Mems<Self::Mem>,
    ) -> Result<()>;

    /// Sum of squares of a float tensor (for gradient-norm clipping), accumulated in f64.
    fn sum_squares(&self, loc: Loc, dtype: DType, mems: &Mems<Self::Mem>) -> Result<f64>;

    /// One SGD step (PyTorch semantics; `first` when the momentum buffer is still empty, which then starts as
    /// the gradient). Gradients are multiplied by `grad_scale` first.
    fn sgd(&self, slot: &SgdSlot, cfg: &SgdConfig, first: bool, grad_scale: f32, mems: &mut Mems<Self::Mem>) -> Result<()>;

    /// `ema = decay * ema + (1 - decay) * src` over `numel` elements; `ema` is f32, `src` is `src_dtype`.
    fn ema(&self, ema: Loc, src: Loc, src_dtype: DType, numel: usize, decay: f32, mems: &mut Mems<Self::Mem>) -> Result<()>;

    /// `acc = grad` (when `first`) or `acc = acc + grad` over `numel` elements; `acc` is f32.
    fn accumulate(&self, acc: Loc, grad: Loc, grad_dtype: DType, numel: usize, first: bool, mems: &mut Mems<Self::Mem>) -> Result<()>;

    /// Bytes of scratch [`sum_squares_many`](Self::sum_squares_many) needs for tensors of these sizes.
    fn sum_squares_scratch(&self, _numels: &[usize]) -> usize {
        0
    }

    /// The sum of squares of every tensor together (the squared global gradient norm), in f64. Device
    /// backends reduce on the device in `scratch` (of [`sum_squares_scratch`](Self::sum_squares_scratch)
    /// bytes) and read back one number; the default sums [`sum_squares`](Self::sum_squares) per tensor.
    fn sum_squares_many(&self, tensors: &[(Loc, DType)], _scratch: Option<Loc>, mems: &mut Mems<Self::Mem>) -> Result<f64> {
        let mut sum = 0.0;
        for &(loc, dtype) in tensors {
            sum += self.sum_squares(loc, dtype, mems)?;
        }
        Ok(sum)
    }
}

/// The backends a user can pick (`--backend`, or `INSTAGEN_BACKEND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// `CpuBackend`: the CPU engine (fast paths where an op family has one).
    Cpu,
    /// `CpuReference`: the exact reference alone, what the CPU engine was before the fast paths (for "before"
    /// timings; `cpu-reference`).
    CpuReference,
    Emu,
    Cuda,
}

/// Evaluates `$body` with `$mk` bound to a constructor (`impl Fn() -> Result<B>`) of the backend `$kind` names:
/// the one place that turns a run-time [`BackendKind`] into a static backend type.
///
/// `with_backend!(kind, |mk| run_with(mk, &opts))`
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$mk:ident| $body:expr) => {
        match $kind {
            $crate::backend::BackendKind::Cpu => {
                let $mk = || -> $crate::Result<$crate::backend::cpu::CpuBackend> { Ok($crate::backend::cpu::CpuBackend) };
                $body
            }
            $crate::backend::BackendKind::CpuReference => {
                let $mk = || -> $crate::Result<$crate::backend::cpu::CpuReference> { Ok($crate::backend::cpu::CpuReference) };
                $body
            }
            $crate::backend::BackendKind::Emu => {
                let $mk = || -> $crate::Result<$crate::backend::emu::EmuBackend> { Ok($crate::backend::emu::EmuBackend::new()) };
                $body
            }
            $crate::backend::BackendKind::Cuda => {
                let $mk = || $crate::backend::cuda::CudaBackend::new(0);
                $body
            }
        }
    };
}

impl BackendKind {
    pub fn parse(s: &str) -> crate::error::Result<Self> {
        match s {
            "cpu" => Ok(BackendKind::Cpu),
            "cpu-reference" => Ok(BackendKind::CpuReference),
            "emu" => Ok(BackendKind::Emu),
            "cuda" => Ok(BackendKind::Cuda),
            other => Err(crate::error::Error::Other(format!("unknown backend '{other}' (cpu, cpu-reference, emu, cuda)"))),
        }
    }

    /// `INSTAGEN_BACKEND` if set; else `cuda` when a GPU is found and kernels were compiled; else `cpu`.
    pub fn default_for_machine() -> crate::error::Result<Self> {
        if let Ok(s) = std::env::var("INSTAGEN_BACKEND") {
            return Self::parse(&s);
        }
        if crate::kernels::compiled() && cuda::probe::probe().has_gpu() {
            return Ok(BackendKind::Cuda);
        }
        Ok(BackendKind::Cpu)
    }
}
