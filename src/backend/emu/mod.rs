//! The `emu` backend's foundation: the `kernels/*.cu` sources compiled for the CPU through the emulation
//! header `kernels/emu/cuda_emu.h` and run by the fibre scheduler `kernels/emu/runtime.cpp`, so CI (no GPU)
//! runs every kernel's logic. See [`ffi`] for launching, checked (guarded) memory and settings.
//!
//! Rules for kernels that must also run here: include only `common.cuh` and other `kernels/*.cuh` (no system
//! headers); reach tensor cores, `cp.async` and dynamic shared memory through the wrappers in `common.cuh`;
//! never spin-wait on another thread; `__syncthreads` and warp collectives must be reached by every thread
//! (lane) they cover, at the same call site for `__syncthreads`.

pub mod ffi;
pub use ffi::*;

pub mod backend;
pub use backend::EmuBackend;
