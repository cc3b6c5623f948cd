//! The CUDA backend: cudarc launchers for the NVRTC-compiled kernels of `kernels/*.cu` (embedded by
//! `crate::kernels`), and the device probe that runs before the driver is touched.

pub mod backend;
pub mod probe;

pub use backend::{CudaBackend, CudaMem, ModuleKey};
