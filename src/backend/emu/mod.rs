//! The `emu` backend's foundation: the `kernels/*.cu` sources compiled for the CPU through the emulation
//! header `kernels/emu/cuda_emu.h` and run by the fibre scheduler `kernels/emu/runtime.cpp`, so CI (no GPU)
//! runs every kernel's logic. See [`ffi`] for launching, checked (guarded) memory and settings.
//!
//! Rules for kernels that must also run here: include only `common.cuh` and other `kernels/*.cuh` (no system
//! headers); reach tensor cores, `cp.async` and dynamic shared memory through the wrappers in `common.cuh`;
//! never spin-wait on another thread; `__syncthreads` and warp collectives must be reached by every thread
//! (lane) they cover, at the same call site for `__syncthreads`. Assume nothing about the order in which warps
//! run between barriers or when a `cp.async` copy lands before its wait: the emulator picks both at random
//! (seeded, `INSTAGEN_EMU_SEED`), so every read of shared memory another warp wrote needs a `__syncthreads`
//! between (and, for `cp.async`, the writer's covering wait before it); checked mode reports any such race.
//! Static `__shared__` arrays start poisoned in every block: declare them one per statement, without an
//! initializer (`__shared__ T name[N];`), which build/emu.rs rewrites into the emulator's per-worker copy. Mark a barrier or wait that a race
//! variant test deletes with `INSTAGEN_DROPPABLE(n)` (kernels/common.cuh).

pub mod ffi;
pub use ffi::*;

pub mod backend;
pub use backend::EmuBackend;
